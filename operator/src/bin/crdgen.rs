//! Writes the CRD YAML for every gpupool resource into a directory (default `crds/`).
//!
//! `cargo run -p gpupool-operator --bin crdgen [-- <dir>]`

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../crds").to_string());
    std::fs::create_dir_all(&dir)?;
    for crd in gpupool::api::all_crds() {
        let path = std::path::Path::new(&dir).join(gpupool::api::crd_file_name(&crd));
        std::fs::write(&path, gpupool::api::crd_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

//! `crds/` must be exactly what the Rust types generate (run `make crds` to refresh it).

#[test]
fn crds_directory_matches_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut expected_files = Vec::new();
    for crd in gpupool::api::all_crds() {
        let name = gpupool::api::crd_file_name(&crd);
        let want = gpupool::api::crd_yaml(&crd);
        let have = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("crds/{name} missing ({e}); run `make crds`"));
        assert!(
            have == want,
            "crds/{name} drifted from the Rust types; run `make crds` and commit the result"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "crds/ holds files no Rust type generates"
    );
}

#[test]
fn every_crd_has_status_subresource_short_name_and_printer_columns() {
    for crd in gpupool::api::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} lacks /status"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name} lacks a short name"
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{name} lacks printer columns"
        );
    }
}

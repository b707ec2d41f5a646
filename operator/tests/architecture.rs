//! The operator's architecture, checked on its source: top-level modules import only modules of
//! lower layers (so no import circle between them can form), and no production function grows
//! past 100 lines unless it is named below with its reason. The README's "Layers" section
//! describes the same table.

use quote::ToTokens;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Layer of every top-level module of the library: a module may import only modules of a
/// strictly lower layer. A new top-level module must be placed here.
const LAYERS: &[(&str, u8)] = &[
    // Foundation: API types, the chain client, leader election, logging.
    ("api", 0),
    ("ledger", 0),
    ("leader", 0),
    ("telemetry", 0),
    // Conventions every layer shares: field manager, finalizer, labels, names, conditions.
    ("meta", 1),
    // Pure models and decisions.
    ("topology", 2),
    ("rollout", 2),
    // Tenant namespaces and what a template may reference (pure).
    ("tenant", 2),
    ("placement", 3),
    // Member objects built from a decision.
    ("workloads", 4),
    // The hub's side of pull members; the node agent.
    ("pull", 5),
    ("agent", 5),
    // Reaching and watching members.
    ("federation", 6),
    ("join", 7),
    ("metrics", 7),
    ("metering", 8),
    ("member_agent", 9),
    ("scheduler", 10),
    ("controllers", 11),
    ("cli", 12),
    // The inference gateway: hub jobs and member pods in, requests out.
    ("gateway", 12),
];

/// Production functions allowed over [`MAX_FN_LINES`], each with its reason. Keep it short:
/// split a function rather than add it here.
const LONG_FUNCTIONS: &[(&str, &str)] = &[
    // A schema literal: the pod template's CEL rules and bounds as one JSON document.
    (
        "api/common.rs:pod_template_schema",
        "one declarative JSON schema literal",
    ),
];

/// The most lines (from `fn` to the closing brace) a production function may have.
const MAX_FN_LINES: usize = 100;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One production source file of the library and the top-level module it belongs to.
struct SourceFile {
    path: PathBuf,
    top: String,
    file: syn::File,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && {
            let t = a.meta.to_token_stream().to_string();
            t.contains("test") && !t.contains("not")
        }
    })
}

fn is_test_fn(attrs: &[syn::Attribute]) -> bool {
    is_cfg_test(attrs)
        || attrs.iter().any(|a| {
            a.path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "test" || s.ident == "bench")
        })
}

fn parse(path: &Path) -> syn::File {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The file of `mod name;` declared in a file whose children live in `dir`.
fn module_file(dir: &Path, name: &str, attrs: &[syn::Attribute], parent: &Path) -> PathBuf {
    for a in attrs.iter().filter(|a| a.path().is_ident("path")) {
        if let syn::Meta::NameValue(nv) = &a.meta
            && let syn::Expr::Lit(l) = &nv.value
            && let syn::Lit::Str(s) = &l.lit
        {
            return parent
                .parent()
                .expect("a file has a directory")
                .join(s.value());
        }
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// Follows the `mod` declarations of `items` (of `path`, children in `dir`), skipping test
/// modules, and collects every file reached.
fn collect(items: &[syn::Item], path: &Path, dir: &Path, top: &str, out: &mut Vec<SourceFile>) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        if is_cfg_test(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        match &m.content {
            Some((_, inner)) => collect(inner, path, &dir.join(&name), top, out),
            None => {
                let child = module_file(dir, &name, &m.attrs, path);
                let file = parse(&child);
                let child_dir = if child.file_name().is_some_and(|f| f == "mod.rs") {
                    child
                        .parent()
                        .expect("mod.rs has a directory")
                        .to_path_buf()
                } else {
                    child.with_extension("")
                };
                collect(&file.items, &child, &child_dir, top, out);
                out.push(SourceFile {
                    path: child,
                    top: top.to_string(),
                    file,
                });
            }
        }
    }
}

/// Every production file of the library, by top-level module, plus the binaries (top `bin`).
fn production_files() -> Vec<SourceFile> {
    let root = src();
    let lib = parse(&root.join("lib.rs"));
    let mut out = Vec::new();
    for item in &lib.items {
        let syn::Item::Mod(m) = item else { continue };
        if is_cfg_test(&m.attrs) {
            continue;
        }
        let top = m.ident.to_string();
        collect(
            std::slice::from_ref(item),
            &root.join("lib.rs"),
            &root,
            &top,
            &mut out,
        );
    }
    for entry in std::fs::read_dir(root.join("bin")).expect("src/bin") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let file = parse(&path);
            out.push(SourceFile {
                path,
                top: "bin".into(),
                file,
            });
        }
    }
    out
}

/// The top-level modules a file names through `crate::…` (in `use`, paths and macro bodies),
/// outside test code.
#[derive(Default)]
struct CrateRefs(BTreeSet<String>);

impl CrateRefs {
    fn macro_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let toks: Vec<String> = tokens
            .into_iter()
            .flat_map(|t| match t {
                proc_macro2::TokenTree::Group(g) => {
                    self.macro_tokens(g.stream());
                    Vec::new()
                }
                t => vec![t.to_string()],
            })
            .collect();
        for w in toks.windows(4) {
            if w[0] == "crate" && w[1] == ":" && w[2] == ":" {
                self.0.insert(w[3].clone());
            }
        }
    }
}

impl<'ast> Visit<'ast> for CrateRefs {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_fn(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() >= 2 && p.segments[0].ident == "crate" {
            self.0.insert(p.segments[1].ident.to_string());
        }
        syn::visit::visit_path(self, p);
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if let syn::UseTree::Path(p) = &u.tree
            && p.ident == "crate"
        {
            let mut names = Vec::new();
            first_names(&p.tree, &mut names);
            self.0.extend(names);
        }
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.macro_tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

fn first_names(t: &syn::UseTree, out: &mut Vec<String>) {
    match t {
        syn::UseTree::Path(p) => out.push(p.ident.to_string()),
        syn::UseTree::Name(n) => out.push(n.ident.to_string()),
        syn::UseTree::Rename(r) => out.push(r.ident.to_string()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| first_names(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let files = production_files();
    let mut wrong = Vec::new();
    for f in files.iter().filter(|f| f.top != "bin") {
        let Some(&own) = layer.get(f.top.as_str()) else {
            wrong.push(format!(
                "module `{}` has no layer: add it to LAYERS (and the README)",
                f.top
            ));
            continue;
        };
        let mut refs = CrateRefs::default();
        refs.visit_file(&f.file);
        for to in refs.0.iter().filter(|to| **to != f.top) {
            match layer.get(to.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => wrong.push(format!(
                    "{} (`{}`, layer {own}) imports `{to}` (layer {l})",
                    f.path.strip_prefix(src()).unwrap_or(&f.path).display(),
                    f.top
                )),
                None => wrong.push(format!(
                    "{} imports `crate::{to}`, which has no layer",
                    f.path.display()
                )),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

/// `(file:name, lines)` of every production function longer than [`MAX_FN_LINES`].
#[derive(Default)]
struct LongFns {
    file: String,
    found: Vec<(String, usize)>,
}

impl LongFns {
    fn check(&mut self, name: &syn::Ident, from: proc_macro2::Span, block: &syn::Block) {
        let lines = block.brace_token.span.close().end().line - from.start().line + 1;
        if lines > MAX_FN_LINES {
            self.found.push((format!("{}:{name}", self.file), lines));
        }
    }
}

impl<'ast> Visit<'ast> for LongFns {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_cfg_test(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_fn(&f.attrs) {
            self.check(&f.sig.ident, f.sig.fn_token.span, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_fn(&f.attrs) {
            self.check(&f.sig.ident, f.sig.fn_token.span, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.check(&f.sig.ident, f.sig.fn_token.span, block);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn no_production_function_is_over_100_lines() {
    let mut long = Vec::new();
    for f in production_files() {
        let mut v = LongFns {
            file: f
                .path
                .strip_prefix(src())
                .unwrap_or(&f.path)
                .display()
                .to_string(),
            ..Default::default()
        };
        v.visit_file(&f.file);
        long.extend(v.found);
    }
    let allowed: BTreeSet<&str> = LONG_FUNCTIONS.iter().map(|(f, _)| *f).collect();
    let mut over: Vec<String> = long
        .iter()
        .filter(|(name, _)| !allowed.contains(name.as_str()))
        .map(|(name, n)| format!("{name}: {n} lines"))
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "production functions over {MAX_FN_LINES} lines (split them into named steps, or name \
         them in LONG_FUNCTIONS with the reason):\n{}",
        over.join("\n")
    );
    // An allow-list entry for a function that is no longer long (or gone) is stale.
    let found: BTreeSet<&str> = long.iter().map(|(n, _)| n.as_str()).collect();
    let stale: Vec<&&str> = allowed.iter().filter(|a| !found.contains(**a)).collect();
    assert!(
        stale.is_empty(),
        "LONG_FUNCTIONS names functions that are not over {MAX_FN_LINES} lines: {stale:?}"
    );
}

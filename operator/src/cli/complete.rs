//! Completion for `kubectl gpupool` through kubectl's plugin mechanism: kubectl (1.26+) runs
//! `kubectl_complete-gpupool ARGS... PARTIAL` and shows what it prints in Cobra's `__complete`
//! format — one candidate a line (`value<TAB>description`), then `:<directive>`.
//!
//! [`plan`] (pure) reads the words typed so far against the clap command tree and says what the
//! last word can be: subcommands, flags, an output format, or names that live on the hub (member
//! clusters, jobs, namespaces) or in the kubeconfig (contexts); [`run`] looks the names up, with
//! a short timeout, so a slow hub never blocks the shell.

use super::GlobalArgs;
use clap::Command;
use std::path::PathBuf;
use std::time::Duration;

/// Cobra's directive: complete nothing else (no file names).
const NO_FILE_COMP: u8 = 4;
/// Cobra's directive: the shell's default (file names).
const DEFAULT: u8 = 0;
/// The longest a hub lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the word being completed can be.
#[derive(Clone, Debug, PartialEq)]
pub enum Want {
    /// These words, each with a description.
    Words(Vec<(String, String)>),
    /// MemberCluster names.
    Members,
    /// Job names (`KIND/` kept when the word has one), in `namespace` (default: the context's).
    Jobs {
        /// `-n` given on the line.
        namespace: Option<String>,
    },
    /// Namespaces of the hub.
    Namespaces,
    /// Contexts of the kubeconfig.
    Contexts,
    /// File names (the shell completes them).
    Files,
    /// Nothing to offer.
    Nothing,
}

/// The plan for one completion request.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What to offer.
    pub want: Want,
    /// The word being completed.
    pub partial: String,
    /// `--kubeconfig`/`--context` typed on the line (lookups use them).
    pub global: (Option<PathBuf>, Option<String>),
}

fn output_formats() -> Vec<(String, String)> {
    [
        ("wide", "a table with more columns"),
        ("name", "kind/name per line"),
        ("json", "JSON"),
        ("yaml", "YAML"),
        (
            "jsonpath=",
            "a JSONPath template, e.g. jsonpath={.members[*].name}",
        ),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .to_vec()
}

/// The flag of `cmd` (its own or a global one) that `word` names; `word` is `--long` or `-s`.
fn flag<'a>(cmd: &'a Command, word: &str) -> Option<&'a clap::Arg> {
    let word = word.split_once('=').map_or(word, |(f, _)| f);
    cmd.get_arguments().find(|a| match word.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => {
            let mut cs = word.strip_prefix('-').unwrap_or_default().chars();
            matches!((cs.next(), cs.next()), (Some(c), None) if a.get_short() == Some(c))
        }
    })
}

fn takes_value(a: &clap::Arg) -> bool {
    a.get_action().takes_values()
}

/// What a flag's or a positional's value can be, by its id.
fn value_of(a: &clap::Arg, namespace: &Option<String>) -> Want {
    match a.get_id().as_str() {
        "output" => Want::Words(output_formats()),
        "namespace" => Want::Namespaces,
        "context" => Want::Contexts,
        "kubeconfig" => Want::Files,
        "member" => Want::Members,
        "job" => Want::Jobs {
            namespace: namespace.clone(),
        },
        _ => {
            let values: Vec<(String, String)> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| {
                    let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
                    (v.get_name().to_string(), help)
                })
                .collect();
            if values.is_empty() {
                Want::Nothing
            } else {
                Want::Words(values)
            }
        }
    }
}

/// The flags of `cmd` (long forms), with their help.
fn flags(cmd: &Command) -> Want {
    Want::Words(
        cmd.get_arguments()
            .filter(|a| !a.is_positional() && !a.is_hide_set())
            .filter_map(|a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.get_long().map(|l| (format!("--{l}"), help))
            })
            .collect(),
    )
}

/// The subcommands of `cmd`, with what each does.
fn subcommands(cmd: &Command) -> Want {
    Want::Words(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| {
                let about = s.get_about().map(|h| h.to_string()).unwrap_or_default();
                (s.get_name().to_string(), about)
            })
            .collect(),
    )
}

/// What the last of `args` (the words after `gpupool`; the last one is being typed, maybe
/// empty) can be, read against `app`.
pub fn plan(mut app: Command, args: &[String]) -> Plan {
    app.build();
    let (done, partial) = match args.split_last() {
        Some((last, done)) => (done, last.clone()),
        None => (&[][..], String::new()),
    };
    let mut cmd = &app;
    let (mut positionals, mut namespace) = (0usize, None);
    let mut global: (Option<PathBuf>, Option<String>) = (None, None);
    let mut pending: Option<&clap::Arg> = None;
    for word in done {
        if let Some(a) = pending.take() {
            match a.get_id().as_str() {
                "namespace" => namespace = Some(word.clone()),
                "kubeconfig" => global.0 = Some(PathBuf::from(word)),
                "context" => global.1 = Some(word.clone()),
                _ => {}
            }
            continue;
        }
        if word.starts_with('-') && word.len() > 1 {
            if let Some(a) = flag(cmd, word) {
                match word.split_once('=') {
                    Some((_, v)) => match a.get_id().as_str() {
                        "namespace" => namespace = Some(v.to_string()),
                        "kubeconfig" => global.0 = Some(PathBuf::from(v)),
                        "context" => global.1 = Some(v.to_string()),
                        _ => {}
                    },
                    None if takes_value(a) => pending = Some(a),
                    None => {}
                }
            }
            continue;
        }
        match cmd.find_subcommand(word) {
            Some(sub) if positionals == 0 => cmd = sub,
            _ => positionals += 1,
        }
    }
    let want = if let Some(a) = pending {
        value_of(a, &namespace)
    } else if partial.starts_with('-') {
        flags(cmd)
    } else if cmd.has_subcommands() && positionals == 0 {
        subcommands(cmd)
    } else {
        cmd.get_arguments()
            .filter(|a| a.is_positional())
            .nth(positionals)
            .map_or(Want::Nothing, |a| value_of(a, &namespace))
    };
    Plan {
        want,
        partial,
        global,
    }
}

/// Candidates of `words` that start with `partial`, in Cobra's format with `directive`.
pub fn render(words: &[(String, String)], partial: &str, directive: u8) -> String {
    let mut out = String::new();
    for (w, help) in words.iter().filter(|(w, _)| w.starts_with(partial)) {
        let help = help.lines().next().unwrap_or_default();
        if help.is_empty() {
            out.push_str(&format!("{w}\n"));
        } else {
            out.push_str(&format!("{w}\t{help}\n"));
        }
    }
    out.push_str(&format!(":{directive}\n"));
    out
}

/// Names of `resource` objects on the hub (in `namespace`, or cluster-wide).
async fn names(
    client: &kube::Client,
    resource: &kube::api::ApiResource,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    use kube::api::{Api, DynamicObject, ListParams};
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let list = api.list_metadata(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect())
}

/// Looks up the names a plan wants on the hub or in the kubeconfig.
async fn lookup(plan: &Plan) -> anyhow::Result<Vec<(String, String)>> {
    use super::plugin::JobKind;
    let global = GlobalArgs {
        kubeconfig: plan.global.0.clone(),
        context: plan.global.1.clone(),
        ..Default::default()
    };
    let bare = |v: Vec<String>, help: &str| {
        v.into_iter()
            .map(|n| (n, help.to_string()))
            .collect::<Vec<_>>()
    };
    Ok(match &plan.want {
        Want::Contexts => {
            let kc = match &global.kubeconfig {
                Some(p) => kube::config::Kubeconfig::read_from(p)?,
                None => kube::config::Kubeconfig::read()?,
            };
            bare(kc.contexts.into_iter().map(|c| c.name).collect(), "")
        }
        Want::Members => {
            let hub = super::commands::connect(&global).await?;
            let r = kube::api::ApiResource::erase::<crate::api::MemberCluster>(&());
            bare(names(&hub.client, &r, None).await?, "MemberCluster")
        }
        Want::Namespaces => {
            let hub = super::commands::connect(&global).await?;
            let r = kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
            bare(names(&hub.client, &r, None).await?, "")
        }
        Want::Jobs { namespace } => {
            let hub = super::commands::connect(&global).await?;
            let ns = namespace.clone().unwrap_or(hub.namespace.clone());
            // `tj/`… keeps its prefix; a bare word gets both kinds' names.
            let (prefix, kinds) = match plan.partial.split_once('/') {
                Some((k, _)) => match super::plugin::parse_job_ref(&format!("{k}/x")) {
                    Ok((Some(kind), _)) => (format!("{k}/"), vec![kind]),
                    _ => return Ok(Vec::new()),
                },
                None => (String::new(), vec![JobKind::Training, JobKind::Inference]),
            };
            let mut out = Vec::new();
            for kind in kinds {
                for n in names(&hub.client, &kind.resource(), Some(&ns)).await? {
                    out.push((format!("{prefix}{n}"), kind.kind().to_string()));
                }
            }
            out
        }
        Want::Words(w) => w.clone(),
        Want::Files | Want::Nothing => Vec::new(),
    })
}

/// Answers one completion request (`args` as kubectl passes them) on stdout. A lookup that
/// fails or takes longer than a few seconds offers nothing rather than an error: the shell
/// must not hang or print noise.
pub async fn run(app: Command, args: &[String]) {
    let plan = plan(app, args);
    let directive = if plan.want == Want::Files {
        DEFAULT
    } else {
        NO_FILE_COMP
    };
    let words = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&plan)).await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "completion lookup");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    print!("{}", render(&words, &plan.partial, directive));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn want(line: &[&str]) -> Plan {
        let args: Vec<String> = line.iter().map(|s| s.to_string()).collect();
        plan(crate::cli::Plugin::command(), &args)
    }

    fn words(p: &Plan) -> Vec<String> {
        match &p.want {
            Want::Words(w) => w
                .iter()
                .filter(|(w, _)| w.starts_with(&p.partial))
                .map(|(w, _)| w.clone())
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subcommands_flags_and_values_are_offered_where_they_fit() {
        let top = words(&want(&[""]));
        for c in [
            "why",
            "where",
            "queue",
            "members",
            "approve",
            "drain",
            "join-token",
        ] {
            assert!(top.contains(&c.to_string()), "{c} in {top:?}");
        }
        assert_eq!(words(&want(&["cor"])), vec!["cordon"]);
        assert_eq!(want(&["approve", ""]).want, Want::Members);
        assert_eq!(want(&["drain", "--timeout", "5m", ""]).want, Want::Members);
        assert_eq!(
            want(&["why", "-n", "team-a", "tj/"]).want,
            Want::Jobs {
                namespace: Some("team-a".into())
            }
        );
        assert_eq!(
            want(&["where", "--namespace=ml", ""]).want,
            Want::Jobs {
                namespace: Some("ml".into())
            }
        );
        assert_eq!(want(&["why", "-n", ""]).want, Want::Namespaces);
        assert_eq!(
            want(&["approve", "m1", ""]).want,
            Want::Nothing,
            "one member"
        );
        assert_eq!(
            words(&want(&["members", "-o", "j"])),
            vec!["json", "jsonpath="]
        );
        assert_eq!(want(&["members", "--context", ""]).want, Want::Contexts);
        assert_eq!(want(&["--kubeconfig", ""]).want, Want::Files);
        let flags = words(&want(&["drain", "m1", "--"]));
        for f in ["--timeout", "--kubeconfig", "--context", "--output"] {
            assert!(flags.contains(&f.to_string()), "{f} in {flags:?}");
        }
        assert_eq!(words(&want(&["join-token", "cr"])), vec!["create"]);
        let shells = words(&want(&["completion", ""]));
        assert!(shells.contains(&"bash".to_string()), "{shells:?}");
        let p = want(&["--kubeconfig", "/k", "--context=c", "approve", ""]);
        assert_eq!(p.global, (Some(PathBuf::from("/k")), Some("c".into())));
    }

    #[test]
    fn candidates_are_filtered_by_the_partial_word_in_cobra_format() {
        let w = vec![
            ("member-1".to_string(), "MemberCluster".to_string()),
            ("member-2".to_string(), String::new()),
            ("other".to_string(), String::new()),
        ];
        assert_eq!(
            render(&w, "mem", NO_FILE_COMP),
            "member-1\tMemberCluster\nmember-2\n:4\n"
        );
        assert_eq!(render(&[], "", DEFAULT), ":0\n");
    }
}

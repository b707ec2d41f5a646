//! A pool admin's verbs for members: join tokens, cordon, uncordon, drain.

use super::output::{Output, View, emit};
use super::plugin::table;
use crate::api::{InferenceJob, MemberCluster, TrainingJob};
use crate::join;
use anyhow::{Context, bail};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;

/// `join-token ...`
#[derive(clap::Subcommand, Clone, Debug)]
pub enum TokenCommand {
    /// Issue a join token for a cluster owner (printed once; the hub keeps no copy).
    Create {
        /// Lifetime, e.g. `30m`, `24h`, `7d`.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Bind the token to one member name.
        #[arg(long)]
        member: Option<String>,
    },
    /// List join tokens that can still be used.
    List,
    /// Revoke a join token at once.
    Revoke {
        /// Token id (`join-xxxxx`).
        id: String,
    },
}

/// Parses `90s`, `30m`, `24h`, `7d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("bad duration unit in {s:?} (s, m, h, d)")),
    };
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Runs a join-token verb against the hub.
pub async fn token(hub: &kube::Client, o: &Output, cmd: TokenCommand) -> anyhow::Result<String> {
    match cmd {
        TokenCommand::Create { ttl, member } => {
            let t = join::token::create(hub, ttl, member.as_deref()).await?;
            eprintln!("join token {} (expires {})", t.id, t.expires_at);
            let doc = json!({"id": t.id, "token": t.token, "expiresAt": t.expires_at.to_string()});
            emit(
                o,
                View {
                    names: vec![format!("jointoken/{}", t.id)],
                    doc: &doc,
                    // The token alone on stdout, for `TOKEN=$(gpupool join-token create)`.
                    table: &|d, _| format!("{}\n", d["token"].as_str().unwrap_or("")),
                },
            )
        }
        TokenCommand::List => {
            let tokens: Vec<Value> = join::token::list(hub)
                .await?
                .into_iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "expiresAt": t.expires_at.map(|e| e.to_string()),
                        "member": t.for_member,
                    })
                })
                .collect();
            let doc = json!({ "tokens": tokens });
            let names = tokens
                .iter()
                .map(|t| format!("jointoken/{}", t["id"].as_str().unwrap_or("")))
                .collect();
            emit(
                o,
                View {
                    names,
                    doc: &doc,
                    table: &|d, _| {
                        let rows: Vec<Vec<String>> = d["tokens"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|t| {
                                ["id", "expiresAt", "member"]
                                    .iter()
                                    .map(|k| t[*k].as_str().unwrap_or("-").to_string())
                                    .collect()
                            })
                            .collect();
                        table(&["ID", "EXPIRES", "MEMBER"], &rows)
                    },
                },
            )
        }
        TokenCommand::Revoke { id } => {
            join::token::revoke(hub, &id).await?;
            let doc = json!({"id": id, "revoked": true});
            emit(
                o,
                View {
                    names: vec![format!("jointoken/{id}")],
                    doc: &doc,
                    table: &|d, _| {
                        format!("join token {} revoked\n", d["id"].as_str().unwrap_or(""))
                    },
                },
            )
        }
    }
}

/// `cordon` / `uncordon`: sets `spec.schedulable` of a MemberCluster (the admin's field);
/// uncordoning also ends a drain (`spec.drain`).
pub async fn set_schedulable(
    hub: &kube::Client,
    o: &Output,
    member: &str,
    schedulable: bool,
) -> anyhow::Result<String> {
    let spec = if schedulable {
        json!({"schedulable": true, "drain": null})
    } else {
        json!({"schedulable": false})
    };
    patch_spec(hub, member, spec).await?;
    let doc = json!({"member": member, "schedulable": schedulable});
    emit(
        o,
        View {
            names: vec![format!("membercluster.gpupool.io/{member}")],
            doc: &doc,
            table: &|d, _| {
                let what = if d["schedulable"] == true {
                    "uncordoned"
                } else {
                    "cordoned"
                };
                format!(
                    "membercluster.gpupool.io/{} {what}\n",
                    d["member"].as_str().unwrap_or("")
                )
            },
        },
    )
}

/// Merge-patches `spec` into MemberCluster `member`, which must exist.
async fn patch_spec(
    hub: &kube::Client,
    member: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<MemberCluster> = Api::all(hub.clone());
    if api.get_opt(member).await?.is_none() {
        bail!("no MemberCluster named {member:?}");
    }
    api.patch(
        member,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .with_context(|| format!("updating MemberCluster {member}"))?;
    Ok(())
}

/// Jobs that still hold GPUs on `member`, as `kind/namespace/name`.
pub async fn jobs_on(hub: &kube::Client, member: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for tj in Api::<TrainingJob>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing TrainingJobs")?
    {
        let st = tj.status.clone().unwrap_or_default();
        if st.cluster.as_deref() == Some(member) && !st.workers.is_empty() {
            out.push(format!(
                "trainingjob/{}/{}",
                tj.namespace().unwrap_or_default(),
                tj.name_any()
            ));
        }
    }
    for ij in Api::<InferenceJob>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing InferenceJobs")?
    {
        let st = ij.status.clone().unwrap_or_default();
        if st
            .placements
            .iter()
            .any(|p| p.cluster == member && !p.gpus.is_empty())
        {
            out.push(format!(
                "inferencejob/{}/{}",
                ij.namespace().unwrap_or_default(),
                ij.name_any()
            ));
        }
    }
    Ok(out)
}

/// `drain`: cordons the member and sets `spec.drain` — the operator moves its jobs elsewhere
/// (training gangs restart on other members, inference replicas go within `maxUnavailable`) —
/// then waits (up to `timeout`) until no job holds GPUs there.
pub async fn drain(
    hub: &kube::Client,
    o: &Output,
    member: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    patch_spec(hub, member, json!({"schedulable": false, "drain": true})).await?;
    eprintln!("membercluster.gpupool.io/{member} cordoned; moving its jobs elsewhere");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reported = Vec::new();
    loop {
        let left = jobs_on(hub, member).await?;
        if left.is_empty() {
            break;
        }
        if left != reported {
            eprintln!(
                "waiting for {} job(s) on {member}: {}",
                left.len(),
                left.join(", ")
            );
            reported = left.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{member} is cordoned and draining but {} job(s) still run there after {}s: {}",
                left.len(),
                timeout.as_secs(),
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let doc = json!({"member": member, "schedulable": false, "jobs": []});
    emit(
        o,
        View {
            names: vec![format!("membercluster.gpupool.io/{member}")],
            doc: &doc,
            table: &|d, _| {
                format!(
                    "membercluster.gpupool.io/{} drained\n",
                    d["member"].as_str().unwrap_or("")
                )
            },
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use super::parse_duration as p;
        assert_eq!(p("90").unwrap().as_secs(), 90);
        assert_eq!(p("30m").unwrap().as_secs(), 1800);
        assert_eq!(p("24h").unwrap().as_secs(), 86400);
        assert_eq!(p("7d").unwrap().as_secs(), 604800);
        assert!(p("0s").is_err() && p("3w").is_err() && p("h").is_err());
    }
}

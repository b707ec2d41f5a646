//! A pool admin's verbs for pull members: join tokens, approve, deny.

use crate::api::Approval;
use crate::join;
use std::time::Duration;

/// `gpupool join-token ...`
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

/// Runs a join-token verb against the hub (KUBECONFIG or in-cluster).
pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    let hub = kube::Client::try_default().await?;
    match cmd {
        TokenCommand::Create { ttl, member } => {
            let t = join::token::create(&hub, ttl, member.as_deref()).await?;
            eprintln!("join token {} (expires {})", t.id, t.expires_at);
            println!("{}", t.token);
        }
        TokenCommand::List => {
            println!("{:<16} {:<26} MEMBER", "ID", "EXPIRES");
            for t in join::token::list(&hub).await? {
                println!(
                    "{:<16} {:<26} {}",
                    t.id,
                    t.expires_at
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "-".into()),
                    t.for_member.unwrap_or_else(|| "-".into())
                );
            }
        }
        TokenCommand::Revoke { id } => {
            join::token::revoke(&hub, &id).await?;
            println!("join token {id} revoked");
        }
    }
    Ok(())
}

/// `gpupool approve|deny MEMBER`.
pub async fn set_approval(member: &str, approval: Approval) -> anyhow::Result<()> {
    let hub = kube::Client::try_default().await?;
    join::admin::set_approval(&hub, member, approval).await?;
    println!("member {member}: {approval}");
    Ok(())
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

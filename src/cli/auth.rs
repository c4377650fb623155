//! `leasekeeper auth`: the auth file's principals, tokens and grants (in the spirit of
//! `etcdctl user/role`). Every node reads the same file (copy it to each, or share it) and
//! reloads it within a second of a change.
use crate::auth::{hash_token, new_token, AuthFile, Grant, Principal};
use crate::server::BoxError;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Add a principal with its grants; prints its token once (only a hash is stored).
    Add {
        /// The auth file (created if missing).
        #[arg(long, env = "LEASEKEEPER_AUTH_FILE")]
        file: PathBuf,
        /// The principal's name (shown in errors and logs).
        #[arg(long)]
        name: String,
        /// A role, optionally on queue prefixes: admin, scheduler[:prefix,...],
        /// worker[:prefix,...], reader[:prefix,...]. Repeat for more.
        #[arg(long = "grant", required = true)]
        grants: Vec<Grant>,
        /// Also accept client certificates naming this (DNS subject alternative name).
        #[arg(long = "cert-name")]
        cert_names: Vec<String>,
    },
    /// Give an existing principal one more token (e.g. to rotate: add, switch, revoke the old).
    Token {
        #[arg(long, env = "LEASEKEEPER_AUTH_FILE")]
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Remove a principal: its tokens stop working on every node within a second.
    Revoke {
        #[arg(long, env = "LEASEKEEPER_AUTH_FILE")]
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List principals and grants (never tokens).
    List {
        #[arg(long, env = "LEASEKEEPER_AUTH_FILE")]
        file: PathBuf,
    },
}

fn read_or_new(path: &Path) -> Result<AuthFile, BoxError> {
    if path.exists() {
        Ok(AuthFile::read(path)?)
    } else {
        Ok(AuthFile::default())
    }
}

pub fn auth(cmd: AuthCmd) -> Result<(), BoxError> {
    match cmd {
        AuthCmd::Add {
            file,
            name,
            grants,
            cert_names,
        } => {
            let mut f = read_or_new(&file)?;
            if f.principals.iter().any(|p| p.name == name) {
                return Err(format!("principal {name:?} exists: `auth token` gives it another token, `auth revoke` removes it").into());
            }
            let token = new_token();
            f.principals.push(Principal {
                name,
                grants,
                token_sha256: vec![hash_token(&token)],
                cert_names,
            });
            f.write(&file)?;
            println!("{token}");
        }
        AuthCmd::Token { file, name } => {
            let mut f = AuthFile::read(&file)?;
            let p = f
                .principals
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| format!("no principal {name:?} in {}", file.display()))?;
            let token = new_token();
            p.token_sha256.push(hash_token(&token));
            f.write(&file)?;
            println!("{token}");
        }
        AuthCmd::Revoke { file, name } => {
            let mut f = AuthFile::read(&file)?;
            let before = f.principals.len();
            f.principals.retain(|p| p.name != name);
            if f.principals.len() == before {
                return Err(format!("no principal {name:?} in {}", file.display()).into());
            }
            f.write(&file)?;
            eprintln!("revoked {name}: its tokens stop working as each node reloads the file (within a second)");
        }
        AuthCmd::List { file } => {
            let f = AuthFile::read(&file)?;
            for p in &f.principals {
                let grants: Vec<String> = p
                    .grants
                    .iter()
                    .map(|g| {
                        let role = format!("{:?}", g.role).to_lowercase();
                        if g.queues.is_empty() {
                            role
                        } else {
                            format!("{role}:{}", g.queues.join(","))
                        }
                    })
                    .collect();
                println!(
                    "{}\t{}\ttokens={}\tcert_names={}",
                    p.name,
                    grants.join(" "),
                    p.token_sha256.len(),
                    p.cert_names.join(",")
                );
            }
        }
    }
    Ok(())
}

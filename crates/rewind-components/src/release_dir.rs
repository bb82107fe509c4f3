//! `kind = "release-dir"`: the Capistrano layout. Each release lives in
//! `<root>/releases/<release>/`; `<root>/current` is a relative symlink to the running one.
//! Staging copies into a hidden directory and renames it into place, and switching creates a
//! new symlink and renames it over `current`, so a crash at any instant leaves either the old
//! or the new state, never a half-copied release or a missing `current`.
//!
//! The copy (`cp -a` or `tar -xzf`) is a child process that dies with rewind (see
//! `rewind_proc`). What a killed run left (a staging directory, a temporary symlink, a
//! release half deleted) is renamed into `<root>/.rewind-trash` by the next run and removed
//! from there as far as possible: moving a leftover aside cannot fail because something
//! still writes into it, so a leftover never fails a step.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rewind_core::Action;
use rewind_core::config::ReleaseDirConfig;
use serde_json::json;

use crate::{Component, ComponentError, Ctx, Outcome, Result, Snapshot, crash, proc, ready};

pub struct ReleaseDir {
    name: String,
    cfg: ReleaseDirConfig,
}

impl ReleaseDir {
    pub fn new(name: &str, cfg: ReleaseDirConfig) -> Self {
        ReleaseDir {
            name: name.to_string(),
            cfg,
        }
    }

    fn releases_dir(&self) -> PathBuf {
        self.cfg.root.join("releases")
    }

    fn release_path(&self, release: &str) -> PathBuf {
        self.releases_dir().join(release)
    }

    fn current_link(&self) -> PathBuf {
        self.cfg.root.join("current")
    }

    fn io(&self, context: impl Into<String>, e: std::io::Error) -> ComponentError {
        ComponentError::io(&self.name, context, e)
    }

    /// The release `current` points at, if it is a symlink into `releases/`.
    fn current_release(&self) -> Result<Option<String>> {
        let link = self.current_link();
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(format!("reading {}", link.display()), e)),
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(ComponentError::failed(
                    &self.name,
                    format!(
                        "{} is not a symlink; move it aside (rewind manages `current` as a symlink into releases/)",
                        link.display()
                    ),
                ));
            }
            Ok(_) => {}
        }
        let target = std::fs::read_link(&link)
            .map_err(|e| self.io(format!("reading {}", link.display()), e))?;
        Ok(target.file_name().map(|n| n.to_string_lossy().to_string()))
    }

    fn env_vars<'a>(&'a self, cx: &'a Ctx, release: &'a str) -> Vec<(&'a str, String)> {
        vec![
            ("REWIND_ENVIRONMENT", cx.environment.clone()),
            ("REWIND_COMPONENT", self.name.clone()),
            ("REWIND_RELEASE", release.to_string()),
            ("REWIND_ROOT", self.cfg.root.display().to_string()),
            (
                "REWIND_RELEASE_PATH",
                self.release_path(release).display().to_string(),
            ),
        ]
    }

    /// Where leftovers go before they are removed: `<root>/.rewind-trash`.
    fn trash_dir(&self) -> PathBuf {
        self.cfg.root.join(TRASH)
    }

    /// Clears away what a killed run left behind: half-copied staging directories,
    /// half-deleted releases, temporary symlinks. Each is first renamed into the trash, which
    /// works even while something still writes into it (a child of a run killed a moment
    /// ago); then the trash is emptied as far as it can be. What cannot be removed yet stays
    /// in the trash for the next sweep: a leftover never fails a step (every temporary name
    /// is unique, so none can be in the way).
    fn sweep_leftovers(&self) {
        for dir in [self.releases_dir(), self.cfg.root.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(".rewind-") && name != TRASH {
                    let _ = self.discard(&entry.path());
                }
            }
        }
        self.empty_trash();
    }

    /// Moves `path` into the trash; where that cannot be done (the trash cannot be made, or
    /// lies on another filesystem), renames it to a unique hidden name beside itself and
    /// tries to remove it there.
    fn discard(&self, path: &Path) -> std::io::Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let trash = self.trash_dir();
        let _ = std::fs::create_dir(&trash);
        if std::fs::rename(path, trash.join(format!("{name}-{}", unique()))).is_ok() {
            return Ok(());
        }
        let aside = if name.starts_with(".rewind-") {
            path.to_path_buf()
        } else {
            let aside = path.with_file_name(format!(".rewind-deleting-{name}-{}", unique()));
            std::fs::rename(path, &aside)?;
            aside
        };
        let _ = remove_any(&aside);
        Ok(())
    }

    /// Removes what the trash holds, best effort, and the trash itself once empty.
    fn empty_trash(&self) {
        let trash = self.trash_dir();
        if let Ok(entries) = std::fs::read_dir(&trash) {
            for entry in entries.flatten() {
                let _ = remove_any(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(&trash);
    }

    /// Reads a `.tar.gz` artifact through to its end (`tar -tzf`, within the command
    /// timeout) without unpacking it: a truncated or corrupt archive is refused before the
    /// release is recorded, as a missing artifact is, not half-way through staging it.
    async fn check_tarball(&self, cx: &Ctx, artifact: &str) -> Result<()> {
        let mut list = rewind_proc::Command::new("tar");
        list.args(["-tzf", artifact])
            .stdout(rewind_proc::Sink::Null);
        let out = match list.output_within(self.cfg.command_timeout).await {
            Ok(out) => out,
            Err(rewind_proc::Error::TimedOut(d)) => {
                return Err(ComponentError::failed(
                    &self.name,
                    format!(
                        "artifact {artifact} could not be read through within {} (command-timeout); check the archive, or raise command-timeout",
                        rewind_core::units::format_duration(d)
                    ),
                ));
            }
            Err(e) => {
                return Err(self.io(format!("reading artifact {artifact} with tar"), e.into_io()));
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let why = cx.redactor.redact(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
                .as_str(),
        );
        Err(ComponentError::failed(
            &self.name,
            format!(
                "artifact {artifact} is not a readable .tar.gz ({}); build or download it again",
                if why.is_empty() {
                    "tar -tzf failed".to_string()
                } else {
                    why
                }
            ),
        ))
    }

    async fn stage(&self, cx: &Ctx, release: &str, artifact: Option<&str>) -> Result<Outcome> {
        let dest = self.release_path(release);
        if dest.is_dir() {
            return Ok(Outcome::Skipped(format!(
                "{} is already on disk",
                dest.display()
            )));
        }
        let Some(artifact) = artifact else {
            return Err(ComponentError::failed(
                &self.name,
                format!(
                    "{} does not exist and no artifact was given; pass --artifact {}=PATH (a directory or a .tar.gz)",
                    dest.display(),
                    self.name
                ),
            ));
        };
        let src = Path::new(artifact);
        std::fs::create_dir_all(self.releases_dir())
            .map_err(|e| self.io(format!("creating {}", self.releases_dir().display()), e))?;
        self.sweep_leftovers();
        let staging = self
            .releases_dir()
            .join(format!(".rewind-staging-{release}-{}", unique()));
        let (prog, args): (&str, Vec<String>) = if src.is_dir() {
            (
                "cp",
                vec![
                    "-a".into(),
                    format!("{}/.", src.display()),
                    staging.display().to_string(),
                ],
            )
        } else if is_tarball(src) {
            (
                "tar",
                vec![
                    "-xzf".into(),
                    src.display().to_string(),
                    "-C".into(),
                    staging.display().to_string(),
                ],
            )
        } else if src.exists() {
            return Err(ComponentError::failed(
                &self.name,
                format!(
                    "artifact {} is neither a directory nor a .tar.gz/.tgz file",
                    src.display()
                ),
            ));
        } else {
            return Err(ComponentError::failed(
                &self.name,
                format!("artifact {} does not exist", src.display()),
            ));
        };
        std::fs::create_dir(&staging)
            .map_err(|e| self.io(format!("creating {}", staging.display()), e))?;
        // The copy runs as a child in its own process group: if rewind is killed now, the
        // copy dies with it (see `rewind_proc`) instead of writing on into the staging
        // directory that the next run sweeps away.
        let mut copy = rewind_proc::Command::new(prog);
        copy.args(&args).stdout(rewind_proc::Sink::Null);
        let step = format!("{}.stage", self.name);
        let out = tokio::select! {
            out = copy.output() => out,
            _ = crash::during(&step, || has_entries(&staging)) => {
                unreachable!("crash::during never finishes")
            }
        }
        .map_err(|e| self.io(format!("running {prog}"), e.into_io()))?;
        if !out.status.success() {
            // Aside first, removed as far as it can be: a failed copy's leftovers never
            // hide the copy's own error.
            let _ = self.discard(&staging);
            self.empty_trash();
            return Err(ComponentError::failed(
                &self.name,
                format!(
                    "copying {} into {} failed: {}",
                    src.display(),
                    dest.display(),
                    cx.redactor
                        .redact(String::from_utf8_lossy(&out.stderr).trim())
                ),
            ));
        }
        crash::point("mid", &format!("{}.stage", self.name));
        std::fs::rename(&staging, &dest).map_err(|e| {
            self.io(
                format!("moving {} to {}", staging.display(), dest.display()),
                e,
            )
        })?;
        sync_dir(&self.releases_dir());
        Ok(Outcome::Done(format!(
            "copied {} into {}",
            src.display(),
            dest.display()
        )))
    }

    fn switch(&self, release: &str) -> Result<Outcome> {
        let target = self.release_path(release);
        if self.current_release()?.as_deref() == Some(release) {
            return Ok(Outcome::Skipped(format!(
                "current already points at releases/{release}"
            )));
        }
        if !target.is_dir() {
            return Err(ComponentError::failed(
                &self.name,
                format!(
                    "{} does not exist; cannot point current at it",
                    target.display()
                ),
            ));
        }
        self.sweep_leftovers();
        let tmp = self.cfg.root.join(format!(".rewind-current-{}", unique()));
        let rel = Path::new("releases").join(release);
        std::os::unix::fs::symlink(&rel, &tmp)
            .map_err(|e| self.io(format!("creating symlink {}", tmp.display()), e))?;
        crash::point("mid", &format!("{}.switch", self.name));
        std::fs::rename(&tmp, self.current_link()).map_err(|e| {
            self.io(
                format!(
                    "renaming {} over {}",
                    tmp.display(),
                    self.current_link().display()
                ),
                e,
            )
        })?;
        sync_dir(&self.cfg.root);
        Ok(Outcome::Done(format!("current -> {}", rel.display())))
    }

    async fn restart(&self, cx: &Ctx) -> Result<Outcome> {
        let Some(cmd) = &self.cfg.restart else {
            return Ok(Outcome::Skipped("no restart command configured".into()));
        };
        let release = self.current_release()?.unwrap_or_default();
        let vars = self.env_vars(cx, &release);
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let shown = cx.redactor.redact(cmd);
        let out = proc::run_shell(
            &self.name,
            cmd,
            Some(&self.cfg.root),
            &env,
            self.cfg.command_timeout,
            &cx.redactor,
        )
        .await?;
        crash::point("mid", &format!("{}.restart", self.name));
        proc::expect_success(&self.name, "restart command", &shown, &out)?;
        Ok(Outcome::Done(if out.output.is_empty() {
            format!("`{shown}` exited 0")
        } else {
            out.output
        }))
    }

    fn prune(&self, protect: &[String], known: &[String]) -> Result<Outcome> {
        self.sweep_leftovers();
        let current = self.current_release()?;
        // Only releases the ledger knows are counted and removed, oldest first: a directory
        // somebody put there by hand is left alone.
        let on_disk: Vec<&String> = known
            .iter()
            .filter(|r| self.release_path(r).is_dir())
            .collect();
        let keep = self.cfg.keep as usize;
        if on_disk.len() <= keep {
            return Ok(Outcome::Skipped(format!(
                "{} releases on disk, keep {keep}",
                on_disk.len()
            )));
        }
        let mut excess = on_disk.len() - keep;
        let mut removed = Vec::new();
        for r in on_disk {
            if excess == 0 {
                break;
            }
            if protect.contains(r) || current.as_deref() == Some(r.as_str()) {
                continue;
            }
            let path = self.release_path(r);
            // Renamed away first, so a crash mid-delete never leaves half a release under
            // its name; what cannot be removed at once goes with the next sweep.
            self.discard(&path)
                .map_err(|e| self.io(format!("moving {} aside", path.display()), e))?;
            removed.push(r.clone());
            excess -= 1;
        }
        self.empty_trash();
        if removed.is_empty() {
            Ok(Outcome::Skipped(
                "nothing to remove (the rest are protected)".into(),
            ))
        } else {
            Ok(Outcome::Done(format!("removed {}", removed.join(", "))))
        }
    }
}

/// The trash's name in the app root.
const TRASH: &str = ".rewind-trash";

/// A suffix no other temporary name of this or an earlier run has: the process id (unique
/// among live processes) and the time in nanoseconds (a reused pid of a dead run differs).
fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a file, a symlink or a whole directory.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn is_tarball(p: &Path) -> bool {
    let s = p.to_string_lossy();
    p.is_file() && (s.ends_with(".tar.gz") || s.ends_with(".tgz"))
}

/// Makes a rename durable: fsync the directory that holds it.
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[async_trait]
impl Component for ReleaseDir {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "release-dir"
    }

    async fn current(&self, _cx: &Ctx) -> Result<Option<String>> {
        self.current_release()
    }

    async fn restore_point(&self, _cx: &Ctx, _backup: Option<&str>) -> Result<Snapshot> {
        let current = self.current_release()?;
        let mut on_disk: Vec<String> = std::fs::read_dir(self.releases_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        Ok(Snapshot {
            version: current.clone(),
            data: json!({
                "root": self.cfg.root,
                "current": current.map(|c| format!("releases/{c}")),
                "releases_on_disk": on_disk,
            }),
        })
    }

    async fn precheck(&self, cx: &Ctx, action: &Action) -> Result<()> {
        match action {
            Action::Switch { release, .. } => {
                // `current` must be a symlink we may replace, and the release must be on
                // disk (the caller skips this check when the same plan stages it first).
                self.current_release()?;
                if self.release_path(release).is_dir() {
                    Ok(())
                } else {
                    Err(ComponentError::failed(
                        &self.name,
                        format!(
                            "{path} is no longer on disk (pruned or removed by hand): put the release back there (for a .tar.gz: mkdir -p {path} && tar -xzf ARTIFACT -C {path}) and run the command again, or choose another release with --to",
                            path = self.release_path(release).display()
                        ),
                    ))
                }
            }
            Action::Stage {
                release, artifact, ..
            } => {
                if self.release_path(release).is_dir() {
                    return Ok(());
                }
                match artifact {
                    None => Err(ComponentError::failed(
                        &self.name,
                        format!(
                            "{} does not exist and no artifact was given; pass --artifact {}=PATH (a directory or a .tar.gz)",
                            self.release_path(release).display(),
                            self.name
                        ),
                    )),
                    Some(a) if !Path::new(a).exists() => Err(ComponentError::failed(
                        &self.name,
                        format!("artifact {a} does not exist"),
                    )),
                    Some(a) if !Path::new(a).is_dir() && !is_tarball(Path::new(a)) => {
                        Err(ComponentError::failed(
                            &self.name,
                            format!("artifact {a} is neither a directory nor a .tar.gz/.tgz file"),
                        ))
                    }
                    Some(a) if is_tarball(Path::new(a)) => self.check_tarball(cx, a).await,
                    Some(a)
                        if std::fs::read_dir(a)
                            .map(|mut d| d.next().is_none())
                            .unwrap_or(false) =>
                    {
                        Err(ComponentError::failed(
                            &self.name,
                            format!(
                                "artifact {a} is an empty directory: point --artifact {}=PATH at the built release",
                                self.name
                            ),
                        ))
                    }
                    Some(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    async fn apply(&self, cx: &Ctx, action: &Action) -> Result<Outcome> {
        match action {
            Action::Stage {
                release, artifact, ..
            } => self.stage(cx, release, artifact.as_deref()).await,
            Action::Switch { release, .. } => self.switch(release),
            Action::Restart { .. } => self.restart(cx).await,
            Action::WaitReady { .. } => match &self.cfg.ready {
                Some(r) => ready::wait_ready(
                    &self.name,
                    r,
                    self.cfg.ready_timeout,
                    Some(&self.cfg.root),
                    &cx.redactor,
                )
                .await
                .map(Outcome::Done),
                None => Ok(Outcome::Skipped("no readiness check configured".into())),
            },
            Action::Prune { protect, known, .. } => self.prune(protect, known),
            other => Err(ComponentError::Unsupported {
                component: self.name.clone(),
                kind: "release-dir",
                action: format!("{other:?}"),
            }),
        }
    }
}

//! The one way rewind starts a child process. Every command it runs — the user's shell
//! commands, `cp` and `tar` for a release, `pg_dump`, `pg_restore`, `pgbackrest`, `runuser`,
//! the demo's own sub-commands — goes through [`Command`] (clippy's `disallowed-methods` in
//! `clippy.toml` refuses `std`'s and tokio's `Command::new` elsewhere), so none can outlive the
//! reason it was started.
//!
//! # The process model
//!
//! A command runs as two processes in a process group of its own:
//!
//! - the **supervisor**: rewind's direct child and the group's leader. It is a fork of rewind
//!   that runs nothing else. It forks the command, then waits for two things: the command's
//!   exit (through a pidfd), and its **leash**, a pipe whose only writer is rewind. It hands
//!   the command's exit status to rewind through a second pipe, and exits quietly when rewind
//!   lets go (one byte on the leash) — or, when the leash closes without that byte, kills the
//!   whole group: rewind exited, was killed (SIGKILL included: the kernel closes the pipes of a
//!   dead process), or dropped the command (a step cancelled, a time limit reached).
//! - the **command** itself, with a parent-death signal (`PR_SET_PDEATHSIG` = SIGKILL) whose
//!   parent is the supervisor: if the supervisor is killed on its own, the command goes too.
//!
//! Why this shape. A parent-death signal alone is not enough twice over: it fires when the
//! *thread* that forked the child exits (a tokio blocking thread retires after 10 s idle,
//! long before rewind does), and it kills only the process it is set on, so a shell's own
//! children (`sh -c 'a & b'`, a subshell, a pipeline) live on. Killing the groups from rewind
//! when it exits misses the one exit that matters most, SIGKILL. A pipe closes exactly when
//! the last copy of its write end goes, which for the leash is when rewind's process (not one
//! of its threads) is gone or lets go; and the supervisor, in the group, can kill all of it.
//! The supervisor's parent-death signal is therefore *not* set (it would fire on a thread's
//! exit and leave the group orphaned); the command's is, because its parent, the supervisor,
//! has only one thread.
//!
//! Time limits and cancellation kill the group from rewind too (SIGKILL to `-pgid`), at once.
//!
//! # When a command is over
//!
//! A command is over when its main process has exited and the output rewind captures has
//! reached its end. rewind waits for both (a background process still holding the captured
//! stdout keeps the command running, within its time limit), then lets go. What a command
//! deliberately leaves running with its output redirected — `nohup app >app.log 2>&1 &` in a
//! restart command — is not rewind's to kill, and lives on; a daemon that detaches with
//! `setsid` (as `pg_ctl start` does) leaves the group and lives on in any case.
//!
//! The command's stdin is `/dev/null`: rewind never feeds a command input.

#![allow(unsafe_code)] // fork, prctl, pipes and signals; every block says why it is sound.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The byte that tells the supervisor the command is over and the group may live on.
const LET_GO: u8 = b'.';

/// What becomes of the command's stdout or stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Captured and returned in the [`Output`] (the default).
    Capture,
    /// Shared with rewind's own.
    Inherit,
    /// Discarded.
    Null,
}

impl Sink {
    fn stdio(self) -> Stdio {
        match self {
            Sink::Capture => Stdio::piped(),
            Sink::Inherit => Stdio::inherit(),
            Sink::Null => Stdio::null(),
        }
    }
}

/// Why a command gave no [`Output`].
#[derive(Debug)]
pub enum Error {
    /// It could not be started: not found, not executable, out of processes.
    Start(io::Error),
    /// Reading its output or its exit status failed.
    Wait(io::Error),
    /// It did not finish within the limit; its whole process group was killed.
    TimedOut(Duration),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Start(e) => write!(f, "cannot start it: {e}"),
            Error::Wait(e) => write!(f, "lost track of it: {e}"),
            Error::TimedOut(d) => write!(
                f,
                "it did not finish within {:.1}s and was killed",
                d.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Start(e) | Error::Wait(e) => Some(e),
            Error::TimedOut(_) => None,
        }
    }
}

impl Error {
    /// The underlying I/O error (a time limit is `TimedOut`), for callers whose errors hold one.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Start(e) | Error::Wait(e) => e,
            Error::TimedOut(d) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("did not finish within {:.1}s", d.as_secs_f64()),
            ),
        }
    }
}

/// A command to run, built like `std::process::Command`; [`Command::output`] runs it.
#[derive(Clone, Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    /// Changes to rewind's environment, in order (`None` removes the variable).
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    stdout: Sink,
    stderr: Sink,
}

impl Command {
    /// `program` is looked up in `PATH` unless it holds a `/`.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdout: Sink::Capture,
            stderr: Sink::Capture,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.env.push((
            key.as_ref().to_os_string(),
            Some(value.as_ref().to_os_string()),
        ));
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.env.push((key.as_ref().to_os_string(), None));
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn stdout(&mut self, sink: Sink) -> &mut Command {
        self.stdout = sink;
        self
    }

    pub fn stderr(&mut self, sink: Sink) -> &mut Command {
        self.stderr = sink;
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// Runs the command to its end and returns its status and captured output. Dropping the
    /// future before it completes kills the command's whole process group.
    pub async fn output(&self) -> Result<Output, Error> {
        self.run(None).await
    }

    /// [`Command::output`], killing the whole process group when `limit` passes first.
    pub async fn output_within(&self, limit: Duration) -> Result<Output, Error> {
        self.run(Some(limit)).await
    }

    async fn run(&self, limit: Option<Duration>) -> Result<Output, Error> {
        let plan = Exec::new(self).map_err(Error::Start)?;
        let (status_r, status_w) = status_pipe().map_err(Error::Start)?;
        let status_fd = status_w.as_raw_fd();

        #[allow(clippy::disallowed_methods)] // the one place that may: this is rewind_proc
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(self.stdout.stdio())
            .stderr(self.stderr.stdio())
            .process_group(0);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        // SAFETY: `supervise` runs in the forked child and keeps to async-signal-safe system
        // calls (no allocation, no locks); see its comments.
        unsafe {
            cmd.pre_exec(move || supervise(&plan, status_fd));
        }
        let mut child = cmd.spawn().map_err(Error::Start)?;
        // Only the supervisor may hold the status pipe's write end now, so its end is the
        // supervisor's end.
        drop(status_w);
        let pgid = child
            .id()
            .and_then(|p| libc::pid_t::try_from(p).ok())
            .ok_or_else(|| Error::Wait(io::Error::other("the child has no process id")))?;
        let mut group = Group { pgid, armed: true };
        let mut leash = child.stdin.take().expect("stdin is piped: the leash");
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let status_rx =
            tokio::net::unix::pipe::Receiver::from_owned_fd(status_r).map_err(Error::Wait)?;

        let over =
            async { tokio::join!(read_all(stdout), read_all(stderr), read_status(status_rx)) };
        let over = match limit {
            None => Some(over.await),
            Some(limit) => tokio::time::timeout(limit, over).await.ok(),
        };
        let Some((out, err, status)) = over else {
            group.kill();
            drop(leash);
            let _ = child.wait().await;
            return Err(Error::TimedOut(limit.unwrap_or_default()));
        };
        // The command is over: let go, so what it left running on purpose lives on.
        let _ = leash.write_all(&[LET_GO]).await;
        let _ = leash.flush().await;
        group.armed = false;
        let supervisor = child.wait().await.map_err(Error::Wait)?;
        drop(leash);
        let status = match status.map_err(Error::Wait)? {
            Some(raw) => ExitStatus::from_raw(raw),
            // The supervisor died before it could report (killed from outside, with its
            // group): its own status says how.
            None => supervisor,
        };
        Ok(Output {
            status,
            stdout: out.map_err(Error::Wait)?,
            stderr: err.map_err(Error::Wait)?,
        })
    }
}

/// Kills the process group when dropped while armed: a command whose future is dropped
/// (a cancelled step, the end of a monitoring window, rewind returning) goes with it at once.
struct Group {
    pgid: libc::pid_t,
    armed: bool,
}

impl Group {
    fn kill(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the group `pgid`, which is this
        // command's (the supervisor is its leader and still unreaped, so the id is not reused).
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
        self.armed = false;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

async fn read_all<R: AsyncRead + Unpin>(stream: Option<R>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut s) = stream {
        s.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// The command's wait status as the supervisor reports it, or `None` when the supervisor
/// died first.
async fn read_status(mut rx: tokio::net::unix::pipe::Receiver) -> io::Result<Option<i32>> {
    let mut raw = [0u8; 4];
    match rx.read_exact(&mut raw).await {
        Ok(_) => Ok(Some(i32::from_ne_bytes(raw))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The status pipe, both ends close-on-exec; the write end is moved to fd 3 or above so that
/// setting up the child's stdio (fds 0–2) cannot overwrite it when rewind runs without them.
fn status_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, which we then own.
    let (r, w) = unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    if w.as_raw_fd() > 2 {
        return Ok((r, w));
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1), which we then own.
    let high = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `high` was just returned by fcntl.
    Ok((r, unsafe { OwnedFd::from_raw_fd(high) }))
}

/// What the command's process executes, prepared before the fork (nothing may be allocated
/// after it).
struct Exec {
    program: CString,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings the struct owns, which are never changed
// after construction; the struct is only read (in the forked child).
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

impl Exec {
    fn new(cmd: &Command) -> io::Result<Exec> {
        fn c(s: &OsStr) -> io::Result<CString> {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} holds a NUL byte", s.to_string_lossy()),
                )
            })
        }
        let program = c(&cmd.program)?;
        let mut argv_owned = vec![program.clone()];
        for a in &cmd.args {
            argv_owned.push(c(a)?);
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (k, v) in &cmd.env {
            env.retain(|(ek, _)| ek != k);
            if let Some(v) = v {
                env.push((k.clone(), v.clone()));
            }
        }
        let mut envp_owned = Vec::with_capacity(env.len());
        for (k, v) in &env {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            envp_owned.push(c(&kv)?);
        }
        let argv = argv_owned
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp = envp_owned
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(Exec {
            program,
            _argv: argv_owned,
            argv,
            _envp: envp_owned,
            envp,
        })
    }
}

/// Runs in the forked child (the supervisor-to-be), after std has set up its stdio (fd 0 is
/// the leash, 1 and 2 the command's output), working directory and process group. It returns
/// only with an error (then std reports it to the parent's `spawn`); otherwise it never
/// returns: the command's process executes the program, the supervisor exits.
///
/// Only async-signal-safe system calls from here on: the fork copied one thread of a
/// multi-threaded process, and another thread may have held any lock.
fn supervise(plan: &Exec, status_fd: RawFd) -> io::Result<()> {
    // SAFETY (whole function): plain system calls on descriptors this process owns; no
    // allocation, no locks, no unwinding (std aborts on panic after fork, and nothing here
    // can panic).
    unsafe {
        // tokio's SIGCHLD handler must not run here (it would write to rewind's signal pipe).
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let me = libc::getpid();

        // The exec pipe tells the supervisor whether the program started: the command's end
        // closes on a successful exec (close-on-exec), or carries the errno of a failed one.
        let mut exec = [0 as RawFd; 2];
        if libc::pipe2(exec.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let command = libc::fork();
        if command < 0 {
            return Err(io::Error::last_os_error());
        }
        if command == 0 {
            // The command: dies with the supervisor, reads nothing, becomes the program.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return report_exec_failure(exec[1]);
            }
            if libc::getppid() != me {
                // The supervisor is already gone (killed between fork and prctl).
                libc::_exit(127);
            }
            libc::close(exec[0]);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null < 0 || libc::dup2(null, 0) < 0 {
                return report_exec_failure(exec[1]);
            }
            if null != 0 {
                libc::close(null);
            }
            libc::execvpe(
                plan.program.as_ptr(),
                plan.argv.as_ptr(),
                plan.envp.as_ptr(),
            );
            return report_exec_failure(exec[1]);
        }

        // The supervisor.
        libc::close(exec[1]);
        let mut errno = [0u8; 4];
        let got = loop {
            let n = libc::read(exec[0], errno.as_mut_ptr().cast(), errno.len());
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break n;
        };
        if got != 0 {
            // The program did not start; the command's process tells std the errno and
            // exits, std's `spawn` reaps us: nothing to supervise.
            let mut st = 0;
            libc::waitpid(command, &mut st, 0);
            libc::_exit(127);
        }
        // Keep the leash (0) and the status pipe (as 1); close everything else, so that no
        // copy of rewind's descriptors (another command's leash, std's error pipe, the
        // captured output) stays open here.
        if status_fd != 1 && libc::dup2(status_fd, 1) < 0 {
            libc::kill(0, libc::SIGKILL);
        }
        close_from(2);
        // A status written after rewind died must not kill the supervisor before it kills
        // the group; asked to stop, it stops the group.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, on_stop as *const () as libc::sighandler_t);
        }
        let pidfd = libc::syscall(libc::SYS_pidfd_open, command, 0) as RawFd;
        let mut reported = false;
        let mut released = false;
        loop {
            if reported && released {
                libc::_exit(0);
            }
            let mut fds = [
                libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if reported { -1 } else { pidfd },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Without a pidfd (Linux before 5.3), look at the command every 20 ms.
            let timeout = if pidfd < 0 && !reported { 20 } else { -1 };
            let n = libc::poll(fds.as_mut_ptr(), 2, timeout);
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::kill(0, libc::SIGKILL);
            }
            if fds[0].revents != 0 {
                let mut b = [0u8; 1];
                let r = libc::read(0, b.as_mut_ptr().cast(), 1);
                if r == 1 {
                    released = true;
                } else if r == 0
                    || (*libc::__errno_location() != libc::EINTR
                        && *libc::__errno_location() != libc::EAGAIN)
                {
                    // rewind is gone, or dropped the command: the whole group goes.
                    libc::kill(0, libc::SIGKILL);
                }
            }
            if !reported {
                let mut st: libc::c_int = 0;
                if libc::waitpid(command, &mut st, libc::WNOHANG) == command {
                    let raw = st.to_ne_bytes();
                    libc::write(1, raw.as_ptr().cast(), raw.len());
                    reported = true;
                }
            }
        }
    }
}

/// In the command's process after a failed step before or at exec: tells the supervisor,
/// and hands the errno to std, which reports it to `spawn`.
unsafe fn report_exec_failure(exec_w: RawFd) -> io::Result<()> {
    let e = io::Error::last_os_error();
    let code = e.raw_os_error().unwrap_or(libc::EINVAL).to_ne_bytes();
    // SAFETY: a write of 4 bytes to a pipe this process owns.
    unsafe {
        libc::write(exec_w, code.as_ptr().cast(), code.len());
    }
    Err(e)
}

/// Closes every descriptor from `first` up.
unsafe fn close_from(first: libc::c_uint) {
    // SAFETY: close_range/close on this process's own descriptors.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) == 0 {
            return;
        }
        // Linux before 5.9: close them one by one, up to the limit on open files.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as libc::c_int
        } else {
            1024
        };
        for fd in first as libc::c_int..top {
            libc::close(fd);
        }
    }
}

/// The supervisor's handler for SIGTERM, SIGINT, SIGHUP and SIGQUIT: the group goes.
extern "C" fn on_stop(_: libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// Kills this process with SIGKILL — for crash tests: no destructor runs, exactly as with
/// `kill -9` or a power cut.
pub fn kill_self() -> ! {
    // SAFETY: kill(2) on this process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // The signal is in flight; go no further.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sends SIGTERM to process `pid` (not a child of rewind: a service a restart command
/// started, found through its pid file). Returns whether the signal was sent.
pub fn terminate(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with a positive pid signals that one process.
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}

#[cfg(test)]
mod tests;

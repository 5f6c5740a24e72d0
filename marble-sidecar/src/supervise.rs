//! Running the service as a child: the sidecar stays the parent, forwards termination and
//! user signals, and exits with the child's status (contract §9).
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

/// Signals forwarded to the child.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Why the child could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Installing the signal handlers failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The child could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Waiting for the child failed.
    #[error("waiting for the service: {0}")]
    Wait(std::io::Error),
}

/// What to execute: the measured executable, its argv and added environment.
#[derive(Clone)]
pub struct ChildSpec {
    /// The executable (resolved, canonical path).
    pub program: PathBuf,
    /// `argv[0]` as the child sees it.
    pub arg0: OsString,
    /// `argv[1..]`.
    pub args: Vec<OsString>,
    /// Variables added to the inherited environment (values are secret).
    pub env: Vec<(OsString, OsString)>,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("program", &self.program)
            .field("arg0", &self.arg0)
            .field("args", &self.args.len())
            .field(
                "env_names",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Runs `spec` to completion with signal forwarding; returns the exit code to exit with.
pub async fn run_child(spec: ChildSpec) -> Result<i32, SuperviseError> {
    // Handlers first: a signal arriving between spawn and supervision must not kill the
    // sidecar and orphan the service.
    let forwarder = SignalForwarder::install().map_err(SuperviseError::Signals)?;
    let child = tokio::process::Command::new(&spec.program)
        .arg0(&spec.arg0)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|source| SuperviseError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
    tracing::info!(program = %spec.program.display(), pid = child.id(), "started the service");
    forwarder.supervise(child).await
}

/// Listens for the forwarded signals from the moment it is installed.
pub struct SignalForwarder {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl SignalForwarder {
    /// Installs handlers for every signal in [`FORWARDED`].
    pub fn install() -> std::io::Result<SignalForwarder> {
        let kind = |s: Signal| SignalKind::from_raw(s as i32);
        Ok(SignalForwarder {
            term: signal(kind(Signal::SIGTERM))?,
            int: signal(kind(Signal::SIGINT))?,
            hup: signal(kind(Signal::SIGHUP))?,
            quit: signal(kind(Signal::SIGQUIT))?,
            usr1: signal(kind(Signal::SIGUSR1))?,
            usr2: signal(kind(Signal::SIGUSR2))?,
        })
    }

    /// Forwards signals to `child` until it exits; returns its exit code (128+N if it was
    /// killed by signal N).
    pub async fn supervise(
        mut self,
        mut child: tokio::process::Child,
    ) -> Result<i32, SuperviseError> {
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw);
        loop {
            let sig = tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(SuperviseError::Wait)?;
                    let code = exit_code(status);
                    tracing::info!(code, "the service exited");
                    return Ok(code);
                }
                Some(()) = self.term.recv() => Signal::SIGTERM,
                Some(()) = self.int.recv() => Signal::SIGINT,
                Some(()) = self.hup.recv() => Signal::SIGHUP,
                Some(()) = self.quit.recv() => Signal::SIGQUIT,
                Some(()) = self.usr1.recv() => Signal::SIGUSR1,
                Some(()) = self.usr2.recv() => Signal::SIGUSR2,
            };
            match pid {
                Some(pid) => match nix::sys::signal::kill(pid, sig) {
                    Ok(()) => tracing::info!(signal = %sig, "forwarded signal to the service"),
                    Err(e) => {
                        tracing::debug!(signal = %sig, error = %e, "could not forward signal")
                    }
                },
                None => tracing::debug!(signal = %sig, "the service has already exited"),
            }
        }
    }
}

/// The exit code a shell would report: the child's code, or 128+N for death by signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Serialises the tests that run children: the signal test signals the whole test
    /// process, and every installed forwarder would pass that signal on to its own child.
    static CHILDREN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn sh(script: &str) -> ChildSpec {
        ChildSpec {
            program: "/bin/sh".into(),
            arg0: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
        }
    }

    async fn wait_for(path: &std::path::Path) {
        for _ in 0..500 {
            if path.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the child never became ready");
    }

    #[tokio::test]
    async fn exit_code_argv0_arguments_and_environment_reach_the_child() {
        let _serial = CHILDREN.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // With no operands after `-c SCRIPT`, sh sets $0 to its own argv[0].
        let script = format!(
            r#"printf '%s|%s' "$0" "$QUARRY_TEST_VALUE" > "{}"; exit 7"#,
            out.display()
        );
        let mut spec = sh(&script);
        spec.arg0 = "custom-argv0".into();
        spec.env.push(("QUARRY_TEST_VALUE".into(), "v a l".into()));
        assert_eq!(run_child(spec).await.unwrap(), 7);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "custom-argv0|v a l");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let _serial = CHILDREN.lock().await;
        let mut spec = sh("true");
        spec.program = "/nonexistent/quarry-test".into();
        let err = run_child(spec).await.unwrap_err();
        assert!(matches!(err, SuperviseError::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGKILL as i32)), 137);
    }

    /// The only test that signals the test process itself; the handlers installed by the
    /// forwarder keep the process alive and pass each signal on to the child.
    #[tokio::test]
    async fn signals_to_the_sidecar_reach_the_child_and_its_status_is_returned() {
        let _serial = CHILDREN.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::Pid::this();

        // A child that traps TERM exits with its own code; another forwarded signal,
        // untrapped, kills the child: exit 128+N.
        let cases = [
            (
                "ready-term",
                r#"trap "exit 3" TERM; : > "{ready}"; sleep 10 & wait"#,
                Signal::SIGTERM,
                3,
            ),
            (
                "ready-usr1",
                r#": > "{ready}"; exec sleep 10"#,
                Signal::SIGUSR1,
                128 + Signal::SIGUSR1 as i32,
            ),
        ];
        for (name, script, signal, expected) in cases {
            let ready = dir.path().join(name);
            let script = script.replace("{ready}", &ready.display().to_string());
            let task = tokio::spawn(run_child(sh(&script)));
            wait_for(&ready).await;
            nix::sys::signal::kill(me, signal).unwrap();
            let code = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .unwrap_or_else(|_| panic!("the child must exit after {}", signal.as_str()))
                .unwrap()
                .unwrap();
            assert_eq!(code, expected, "{}", signal.as_str());
        }
    }
}

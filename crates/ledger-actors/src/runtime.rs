//! The actix system and its arbiters, on threads of their own.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use actix::{Arbiter, ArbiterHandle, System};

#[derive(Debug, thiserror::Error)]
pub enum ActorRuntimeError {
    #[error("could not start the actor system thread: {reason}")]
    Start { reason: String },
}

/// The actix system of a node: one system thread plus `arbiter_count` arbiter threads on which
/// account actors are placed by hash of the account id.
pub struct ActorRuntime {
    system: System,
    arbiters: Vec<ArbiterHandle>,
    thread: Option<JoinHandle<()>>,
}

impl ActorRuntime {
    pub fn start(arbiter_count: usize) -> Result<ActorRuntime, ActorRuntimeError> {
        let arbiter_count = arbiter_count.max(1);
        let (ready_sender, ready_receiver) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ledger-actors".into())
            .spawn(move || {
                let system = System::new();
                let arbiters: Vec<Arbiter> = system
                    .block_on(async move { (0..arbiter_count).map(|_| Arbiter::new()).collect() });
                let handles = arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>();
                // The receiver only disappears if `start` itself is gone.
                let _ = ready_sender.send((System::current(), handles));
                if let Err(error) = system.run() {
                    tracing::error!(%error, "actor system stopped with an error");
                }
                for arbiter in arbiters {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
            })
            .map_err(|error| ActorRuntimeError::Start {
                reason: error.to_string(),
            })?;
        let (system, arbiters) =
            ready_receiver
                .recv()
                .map_err(|error| ActorRuntimeError::Start {
                    reason: error.to_string(),
                })?;
        Ok(ActorRuntime {
            system,
            arbiters,
            thread: Some(thread),
        })
    }

    pub(crate) fn arbiters(&self) -> &[ArbiterHandle] {
        &self.arbiters
    }

    /// Stops every actor and joins the threads.
    pub fn stop(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

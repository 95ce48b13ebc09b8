//! A stack: everything shapesync keeps for one source database (its slot and publication, the
//! replication task with its shape log writer, the shape registry and the shape logs on disk),
//! in files without cycles between them:
//! - `status`: status, replication figures and shape errors (a leaf); `config`: how a stack
//!   is set up;
//! - `naming`: slot and publication names (pure);
//! - `ctx`: what the stack shares with its workers ([`StackCtx`]);
//! - `start`: the running [`Stack`] (start, stop, destroy);
//! - `create`: creating a shape; `restore`: restoring shapes on start;
//! - `supervisor`: the replication supervisor.

mod config;
mod create;
pub mod ctx;
mod moves;
mod naming;
pub mod pool;
mod reconcile;
mod restore;
mod start;
pub mod status;
mod supervisor;

pub use config::StackConfig;
pub use ctx::StackCtx;
pub use naming::{publication_name, slot_name, valid_stream_id};
pub use start::Stack;
pub use status::{stopping, ReplicationStats, ShapeError, Status};

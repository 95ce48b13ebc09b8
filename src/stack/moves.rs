//! Move-in queries of subquery shapes: the writer asks for the rows of a shape whose
//! subquery's result gained values; each is read on a pooled connection (never on the
//! replication task) and handed back to the writer to be spliced into the shape's log.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::ctx::StackCtx;
use super::pool::SnapshotPool;
use crate::shape::writer::{Command, MoveRequest};

/// Runs the stack's move-in queries until the writer is gone.
pub async fn run(
    pool: Arc<SnapshotPool>,
    ctx: Arc<StackCtx>,
    mut requests: mpsc::UnboundedReceiver<MoveRequest>,
) {
    while let Some(req) = requests.recv().await {
        let (pool, ctx) = (Arc::clone(&pool), Arc::clone(&ctx));
        tokio::spawn(async move {
            let result = async {
                let conn = pool.get_for_moves().await?;
                match crate::shape::snapshot::move_in_rows(conn.client(), &req).await {
                    Ok(rows) => {
                        conn.release();
                        Ok(rows)
                    }
                    Err(e) => {
                        conn.discard().await;
                        Err(e)
                    }
                }
            }
            .await;
            ctx.command(Command::MoveIn {
                handle: req.shape.handle.clone(),
                seq: req.seq,
                result: result.map_err(|e| format!("{e:#}")),
            });
        });
    }
}

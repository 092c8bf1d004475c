//! The node's sink: what the broker delivers, routed — channel traffic to
//! the [`ChannelIndex`], commands meant for every node to the [`Hub`] of
//! this node's connections and to the [`Runs`] it executes.

use std::sync::{Arc, OnceLock, Weak};

use wsgate_protocol::CloseCode;

use crate::broker::{ClientInfo, ControlKind, NodeCommand, NodeSink};
use crate::channels::fanout::ChannelIndex;
use crate::channels::publication::Publication;
use crate::hub::Hub;
use crate::runs::Runs;

pub struct NodeRouter {
    pub index: Arc<ChannelIndex>,
    pub hub: Arc<Hub>,
    /// Set once the runs are built (they need the broker this router is
    /// the sink of); weak, as the runs hold the broker that holds this.
    pub runs: OnceLock<Weak<Runs>>,
}

impl NodeSink for NodeRouter {
    fn on_publication(&self, publication: &Arc<Publication>) {
        self.index.on_publication(publication);
    }

    fn on_control(&self, channel: &str, kind: ControlKind, client: &ClientInfo) {
        self.index.on_control(channel, kind, client);
    }

    fn on_gap(&self, channel: &str) {
        self.index.on_gap(channel);
    }

    fn on_node_command(&self, command: &NodeCommand) {
        match command {
            NodeCommand::Disconnect { user } => {
                let n = self.hub.close_user(user, CloseCode::Disconnected);
                if n > 0 {
                    tracing::info!(target: "wsgate::audit", event = "disconnect_user", user = %user, connections = n, "closed on this node");
                }
            }
            NodeCommand::StopRun { user, run_id } => {
                let runs = self.runs.get().and_then(Weak::upgrade);
                if runs.is_some_and(|r| r.stop_here(user, run_id).is_some()) {
                    tracing::info!(run_id = %run_id, "run stopped for another node");
                }
            }
        }
    }
}

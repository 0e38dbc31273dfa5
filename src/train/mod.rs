//! Training only where it is needed: which layers (`layers`), and what it costs in
//! memory (`plan`). The trainable window, the losses and the optimizer come next
//! (DESIGN.md sections 4 and 5).

pub mod layers;
pub mod plan;

pub use layers::TrainLayers;
pub use plan::{MemoryPlan, PlanInput};

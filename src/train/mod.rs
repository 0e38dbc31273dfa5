//! Training only where it is needed: which layers (`layers`), what it costs in
//! memory (`plan`), and the optimizer (`adamw`). The trainable window, the losses and the optimizer come next
//! (DESIGN.md sections 4 and 5).

pub mod adamw;
pub mod layers;
pub mod plan;

pub use adamw::AdamW;
pub use layers::TrainLayers;
pub use plan::{MemoryPlan, PlanInput};

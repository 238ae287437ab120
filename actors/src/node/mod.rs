pub mod actor;
pub mod msg;

pub mod component;
pub mod msg;
pub mod supervisor;

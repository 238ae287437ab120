//! Key custody: the key hierarchy, envelope encryption and the storage providers.
//!
//! L1 tenant root (held by the core provider) → L2 tenant KEK (wrapped under L1, in governance
//! state) → L3 keys users create, one material per version (wrapped under L2, in governance
//! state) → L4 data keys (generated per request, returned wrapped under L3). Plaintext key
//! material exists only in memory: in [`SecretKey`], zeroized on drop, and in the edge cache.

pub mod actor;
pub mod ciphertext;
pub mod crypto;
pub mod edge;
pub mod master;
pub mod provider;
mod service;

pub use ciphertext::EncryptionContext;
pub use crypto::SecretKey;
pub use service::{Custody, CustodyError, DataKey, Sealed};

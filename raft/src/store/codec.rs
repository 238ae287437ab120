//! The on-disk and wire encoding of stored values: a format byte, a CRC32 of the payload and
//! the bincode payload. The format byte lets a later release read what an earlier one wrote;
//! the checksum turns silent corruption into a loud storage error.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The only format written today.
pub const FORMAT_V1: u8 = 1;

/// Largest value ever decoded (a snapshot included): a bound against corrupt length prefixes.
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

const HEADER_BYTES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value too short ({0} bytes) to hold a header")]
    Truncated(usize),
    #[error("unknown format version {0}")]
    UnknownFormat(u8),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("decode: {0}")]
    Decode(String),
    #[error("encode: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1, 0, 0, 0, 0];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    let crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[1..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER_BYTES {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(CodecError::UnknownFormat(bytes[0]));
    }
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&bytes[1..HEADER_BYTES]);
    let stored = u32::from_le_bytes(stored);
    let payload = &bytes[HEADER_BYTES..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let (value, _) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (42u64, "tenant".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&v).expect("encode");
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes).expect("decode"), v);
    }

    #[test]
    fn flipped_bit_is_detected() {
        // A corrupted value must fail loudly instead of decoding into something else.
        let mut bytes = encode(&"governance".to_string()).expect("encode");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(decode::<String>(&bytes), Err(CodecError::Checksum { .. })));
    }

    #[test]
    fn unknown_format_and_truncation_are_errors() {
        let mut bytes = encode(&1u32).expect("encode");
        bytes[0] = 9;
        assert!(matches!(decode::<u32>(&bytes), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode::<u32>(&[1, 2]), Err(CodecError::Truncated(2))));
    }
}

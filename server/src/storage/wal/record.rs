//! Records: `[u32 payload length][u32 crc32][postcard(Entry)]`, and what makes a record valid when read.

use std::io::{self};

use super::{RECORD_BYTES_MAX, RECORD_HEADER_BYTES};
use crate::raft::types::Entry;

pub(super) fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Decodes a record's payload: exactly one entry, nothing after it.
pub(super) fn decode_entry(payload: &[u8]) -> Result<Entry, String> {
    match postcard::take_from_bytes::<Entry>(payload) {
        Ok((entry, [])) => Ok(entry),
        Ok((_, rest)) => Err(format!("{} bytes after the entry", rest.len())),
        Err(error) => Err(format!("entry does not decode: {error}")),
    }
}

/// Checks one record in `bytes` (header and payload, nothing else) and decodes its entry.
pub(super) fn decode_record(bytes: &[u8]) -> Result<Entry, String> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(format!(
            "{} bytes is shorter than a record header",
            bytes.len()
        ));
    }
    let (header, payload) = bytes.split_at(RECORD_HEADER_BYTES);
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX {
        return Err(format!(
            "length {len} is over RECORD_BYTES_MAX ({RECORD_BYTES_MAX})"
        ));
    }
    if len != payload.len() {
        return Err(format!(
            "length {len} where the index says {}",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err("crc mismatch".to_string());
    }
    decode_entry(payload)
}

//! Counts the rows of PostgreSQL's binary `COPY` stream as it passes, and
//! checks its framing: the archive's row counts come from the data itself.

use crate::error::{Error, Result};

/// The signature that starts every binary `COPY` stream.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

#[derive(Debug)]
enum State {
    /// Signature, flags and the header extension's length.
    Header,
    /// The header extension.
    Extension,
    /// A tuple's field count (or the trailer's -1).
    Tuple,
    /// A field's length (-1: NULL).
    FieldLength,
    /// A field's bytes.
    Field,
    /// After the trailer.
    Done,
}

/// An incremental parser of a binary `COPY` stream (or a line counter of a
/// text one).
#[derive(Debug)]
pub(crate) struct RowCounter {
    /// Text format: rows are lines (newlines in values are escaped).
    text: bool,
    /// Text format: the last byte seen.
    last: Option<u8>,
    state: State,
    /// Bytes of a fixed-size item read so far.
    pending: Vec<u8>,
    /// Bytes to skip (extension or field data).
    skip: u64,
    fields_left: u16,
    rows: u64,
}

impl Default for RowCounter {
    fn default() -> Self {
        RowCounter {
            text: false,
            last: None,
            state: State::Header,
            pending: Vec::with_capacity(19),
            skip: 0,
            fields_left: 0,
            rows: 0,
        }
    }
}

fn bad(reason: &str) -> Error {
    Error::ArchiveCorrupt {
        reason: format!("table data is not a valid binary COPY stream: {reason}").into(),
    }
}

impl RowCounter {
    /// A counter for a stream in `format`.
    pub(crate) fn new(format: super::CopyFormat) -> Self {
        RowCounter {
            text: format == super::CopyFormat::Text,
            ..RowCounter::default()
        }
    }

    /// Rows seen so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the trailer was seen.
    pub(crate) fn is_complete(&self) -> bool {
        if self.text {
            return self.last.is_none_or(|b| b == b'\n');
        }
        matches!(self.state, State::Done)
    }

    /// Feeds the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut input: &[u8]) -> Result<()> {
        if self.text {
            self.rows += input.iter().filter(|b| **b == b'\n').count() as u64;
            self.last = input.last().copied().or(self.last);
            return Ok(());
        }
        while !input.is_empty() {
            match self.state {
                State::Done => return Err(bad("data after the trailer")),
                State::Extension | State::Field => {
                    let n = self.skip.min(input.len() as u64) as usize;
                    input = &input[n..];
                    self.skip -= n as u64;
                    if self.skip == 0 {
                        self.after_skip();
                    }
                }
                State::Header | State::Tuple | State::FieldLength => {
                    let need = match self.state {
                        State::Header => 19,
                        State::Tuple => 2,
                        _ => 4,
                    };
                    let n = (need - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.pending.len() == need {
                        let item = std::mem::take(&mut self.pending);
                        self.item(&item)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn after_skip(&mut self) {
        self.state = match self.state {
            State::Extension => State::Tuple,
            _ => self.next_field(),
        };
    }

    fn next_field(&mut self) -> State {
        if self.fields_left == 0 {
            State::Tuple
        } else {
            self.fields_left -= 1;
            State::FieldLength
        }
    }

    fn item(&mut self, item: &[u8]) -> Result<()> {
        match self.state {
            State::Header => {
                if &item[..11] != SIGNATURE {
                    return Err(bad("missing signature"));
                }
                let ext = u32::from_be_bytes(item[15..19].try_into().expect("4 bytes"));
                self.skip = u64::from(ext);
                self.state = if ext == 0 {
                    State::Tuple
                } else {
                    State::Extension
                };
            }
            State::Tuple => {
                let count = i16::from_be_bytes([item[0], item[1]]);
                if count == -1 {
                    self.state = State::Done;
                } else if count < 0 {
                    return Err(bad("negative field count"));
                } else {
                    self.rows += 1;
                    self.fields_left = count as u16;
                    self.state = self.next_field();
                }
            }
            State::FieldLength => {
                let len = i32::from_be_bytes(item.try_into().expect("4 bytes"));
                if len == -1 {
                    self.state = self.next_field();
                } else if len < 0 {
                    return Err(bad("negative field length"));
                } else if len == 0 {
                    self.state = self.next_field();
                } else {
                    self.skip = len as u64;
                    self.state = State::Field;
                }
            }
            State::Extension | State::Field | State::Done => unreachable!("not a fixed-size item"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        for value in [Some(&b"abc"[..]), None, Some(&b""[..])] {
            s.extend_from_slice(&2i16.to_be_bytes());
            s.extend_from_slice(&8i32.to_be_bytes());
            s.extend_from_slice(&42i64.to_be_bytes());
            match value {
                Some(v) => {
                    s.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    s.extend_from_slice(v);
                }
                None => s.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    #[test]
    fn counts_rows_whatever_the_chunking() {
        let s = stream();
        for size in [1, 2, 3, 7, 19, 1000] {
            let mut c = RowCounter::default();
            for chunk in s.chunks(size) {
                c.feed(chunk).unwrap();
            }
            assert_eq!(c.rows(), 3);
            assert!(c.is_complete());
        }
        let mut c = RowCounter::default();
        c.feed(&s[..s.len() - 2]).unwrap();
        assert!(!c.is_complete());
        let mut text = RowCounter::new(super::super::CopyFormat::Text);
        text.feed(b"1\ta\\nb\n2\t").unwrap();
        assert!(!text.is_complete());
        text.feed(b"\\N\n").unwrap();
        assert!(text.is_complete());
        assert_eq!(text.rows(), 2);
        let mut c = RowCounter::default();
        assert!(c.feed(b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0").is_err());
    }
}

//! gRPC's length-prefixed framing (uncompressed: the mesh's calls never compress), on both
//! sides of the transcoding.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The five bytes before each message: compressed flag, then its length (big-endian u32).
const PREFIX: usize = 5;

/// `message` as a gRPC body of one frame.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// Messages read off a gRPC body as its data arrives, however the frames were cut.
#[derive(Debug, Default)]
pub(crate) struct Deframer {
    buffered: BytesMut,
}

impl Deframer {
    /// More of the body.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buffered.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    pub(crate) fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if self.buffered.len() < PREFIX {
            return Ok(None);
        }
        if self.buffered[0] != 0 {
            return Err(tonic::Status::internal(
                "the service answered a compressed message, which this access does not read",
            ));
        }
        let len =
            u32::from_be_bytes(self.buffered[1..PREFIX].try_into().expect("4 bytes")) as usize;
        if self.buffered.len() < PREFIX + len {
            return Ok(None);
        }
        self.buffered.advance(PREFIX);
        Ok(Some(self.buffered.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_whole_however_the_body_is_cut() {
        let mut body = frame(b"first").to_vec();
        body.extend_from_slice(&frame(b""));
        body.extend_from_slice(&frame(b"third"));
        let mut deframer = Deframer::default();
        let mut out = Vec::new();
        for byte in body {
            deframer.push(&[byte]);
            while let Some(message) = deframer.next().unwrap() {
                out.push(message);
            }
        }
        assert_eq!(out, [&b"first"[..], b"", b"third"]);
    }

    #[test]
    fn a_compressed_frame_is_refused() {
        let mut deframer = Deframer::default();
        deframer.push(&[1, 0, 0, 0, 1, 7]);
        assert_eq!(deframer.next().unwrap_err().code(), tonic::Code::Internal);
    }
}

//! Framing: cuts a byte stream into PDUs by their `command_length`.
//!
//! A length below the 16-octet header or above [`MAX_PDU_LEN`] means the stream cannot be
//! framed any more (we would not know where the next PDU starts): the caller ends that bind.
//! Everything else about a PDU's content is the decoder's business, one PDU at a time.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::pdu::{Frame, HEADER_LEN};

/// Largest PDU accepted. SMPP 3.4 PDUs are small (a `message_payload` can reach 64 KiB).
pub const MAX_PDU_LEN: usize = 70 * 1024;

/// Why the stream ended.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// `command_length` outside [16, MAX_PDU_LEN].
    #[error("unframeable stream: command_length {0}")]
    BadLength(u32),
    /// The peer closed in the middle of a PDU.
    #[error("connection closed mid-PDU")]
    Truncated,
    /// Socket or TLS error.
    #[error("read error: {0}")]
    Io(std::io::Error),
}

/// Reads whole PDUs from a stream.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(16 * 1024) }
    }

    /// The next PDU; `Ok(None)` on a clean close between PDUs.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await.map_err(FrameError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
            }
        }
    }

    fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len_usize = len as usize;
        if !(HEADER_LEN..=MAX_PDU_LEN).contains(&len_usize) {
            return Err(FrameError::BadLength(len));
        }
        if self.buf.len() < len_usize {
            return Ok(None);
        }
        let mut pdu = self.buf.split_to(len_usize).freeze();
        pdu.advance(4);
        let command_id = pdu.get_u32();
        let status = pdu.get_u32();
        let seq = pdu.get_u32();
        Ok(Some(Frame { command_id, status, seq, body: pdu }))
    }
}

/// Writes queued PDUs, coalescing whatever is waiting into one write (one TLS record, one
/// syscall) of up to 64 KiB. Ends when the channel closes (then shuts the stream down) or on
/// the first write error.
pub async fn write_frames<W: AsyncWrite + Unpin>(mut writer: W, mut rx: mpsc::Receiver<Bytes>) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(&first);
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        writer.write_all(&buf).await?;
        writer.flush().await?;
        buf.clear();
    }
    let _ = writer.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::codec::pdu;

    #[tokio::test]
    async fn splits_coalesced_and_fragmented_pdus() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&pdu::enquire_link(1));
        wire.extend_from_slice(&pdu::unbind(2));
        let (mut a, b) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(5) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = FrameReader::new(b);
        assert_eq!(r.next().await.unwrap().unwrap().seq, 1);
        assert_eq!(r.next().await.unwrap().unwrap().seq, 2);
        writer.await.unwrap();
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_lengths_end_the_stream() {
        for len in [0u32, 15, 0xFFFF_FFFF, (MAX_PDU_LEN + 1) as u32] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0; 12]);
            let mut r = FrameReader::new(&bytes[..]);
            assert!(matches!(r.next().await, Err(FrameError::BadLength(l)) if l == len));
        }
        let mut r = FrameReader::new(&[0u8, 0, 0, 20, 0, 0][..]);
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
    }
}

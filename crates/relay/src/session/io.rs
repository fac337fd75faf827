//! A downstream connection's bytes: frontend messages in, backend messages out.
//!
//! The stream (TCP, or TLS over it) is split so that reading and writing can wait side by side in
//! one `select!`: [`Io::read_message`] keeps a partly read message in its buffer and
//! [`Io::write_some`] writes what it can, so both are cancellation-safe — a session streaming
//! WAL to a client that stopped reading still notices the client's silence and its timeout.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use walrelay_protocol::frontend::{FrontendError, FrontendMessage};

/// Any byte stream a session runs on.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The largest frontend message accepted: commands and standby replies are small; the largest
/// is a manifest chunk of `UPLOAD_MANIFEST`.
pub const MAX_FRONTEND_MESSAGE: usize = 8 * 1024 * 1024;

/// Why reading failed.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection.
    Closed,
    Io(io::Error),
    Protocol(FrontendError),
}

/// The connection, split: [`Io::rx`] and [`Io::tx`] can wait side by side in one `select!`.
pub struct Io {
    pub rx: Receiving,
    pub tx: Sending,
}

/// The reading half and its buffer.
pub struct Receiving {
    reader: ReadHalf<Box<dyn Stream>>,
    buf: BytesMut,
}

/// The writing half and what is queued for the client.
pub struct Sending {
    writer: WriteHalf<Box<dyn Stream>>,
    /// Messages queued for the client.
    pub out: BytesMut,
}

impl Io {
    pub fn new(stream: Box<dyn Stream>, already_read: BytesMut) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Io {
            rx: Receiving {
                reader,
                buf: already_read,
            },
            tx: Sending {
                writer,
                out: BytesMut::with_capacity(64 * 1024),
            },
        }
    }

    pub async fn read_message(&mut self) -> Result<FrontendMessage, ReadError> {
        self.rx.read_message().await
    }

    pub async fn flush(&mut self, limit: Duration) -> io::Result<()> {
        self.tx.flush(limit).await
    }

    /// Closes the connection after sending what is queued (briefly: a client that does not read
    /// is not waited for).
    pub async fn close(mut self) {
        let _ = self.tx.flush(Duration::from_secs(5)).await;
        let _ = self.tx.writer.shutdown().await;
    }
}

impl Receiving {
    /// The next message. Cancellation-safe.
    pub async fn read_message(&mut self) -> Result<FrontendMessage, ReadError> {
        loop {
            if let Some(m) = FrontendMessage::parse(&mut self.buf, MAX_FRONTEND_MESSAGE)
                .map_err(ReadError::Protocol)?
            {
                return Ok(m);
            }
            self.buf.reserve(8192);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

impl Sending {
    /// Writes some of the queued bytes. Cancellation-safe: nothing is written when cancelled.
    pub async fn write_some(&mut self) -> io::Result<()> {
        let n = self.writer.write_buf(&mut self.out).await?;
        if n == 0 && !self.out.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }

    /// Writes everything queued; a client that does not take it within `limit` is given up on.
    pub async fn flush(&mut self, limit: Duration) -> io::Result<()> {
        let write = async {
            while !self.out.is_empty() {
                self.write_some().await?;
            }
            self.writer.flush().await
        };
        if limit.is_zero() {
            return write.await;
        }
        tokio::time::timeout(limit, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client does not read"))?
    }
}

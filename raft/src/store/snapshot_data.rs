//! Snapshot data as openraft reads, writes and seeks it ([`crate::TypeConfig`]'s
//! `SnapshotData`): bytes, or a copy of the state still to be read and encoded.
//!
//! A snapshot handed out by the state machine starts unread, so taking one costs nothing in
//! the state machine worker: openraft reads its meta at start-up and drops it, and only a
//! snapshot sent to a follower is read, on the blocking pool, the first time it is polled.

use std::future::Future;
use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// Produces the encoded snapshot. Blocks.
type Producer = Box<dyn FnOnce() -> io::Result<Vec<u8>> + Send + Sync>;

enum State {
    Bytes(Cursor<Vec<u8>>),
    Unread(Producer),
    Reading(JoinHandle<io::Result<Vec<u8>>>),
}

/// The data of one snapshot.
pub struct SnapshotData {
    state: State,
    /// A seek asked for before the bytes were there.
    pending_seek: Option<SeekFrom>,
}

impl SnapshotData {
    /// Data that is already bytes (a snapshot being received).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SnapshotData { state: State::Bytes(Cursor::new(bytes)), pending_seek: None }
    }

    /// Data produced by `produce`, on the blocking pool, when it is first needed.
    pub(crate) fn deferred(produce: impl FnOnce() -> io::Result<Vec<u8>> + Send + Sync + 'static) -> Self {
        SnapshotData { state: State::Unread(Box::new(produce)), pending_seek: None }
    }

    /// The whole data.
    pub async fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        std::future::poll_fn(|cx| self.poll_bytes(cx).map_ok(drop)).await?;
        match self.state {
            State::Bytes(cursor) => Ok(cursor.into_inner()),
            _ => unreachable!("poll_bytes returned ready"),
        }
    }

    fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Cursor<Vec<u8>>>> {
        loop {
            match &mut self.state {
                State::Bytes(_) => break,
                State::Unread(_) => {
                    let State::Unread(produce) = std::mem::replace(&mut self.state, State::Bytes(Cursor::default()))
                    else {
                        unreachable!("matched above")
                    };
                    self.state = State::Reading(tokio::task::spawn_blocking(produce));
                }
                State::Reading(task) => {
                    let bytes = ready!(Pin::new(task).poll(cx)).map_err(io::Error::other)??;
                    self.state = State::Bytes(Cursor::new(bytes));
                }
            }
        }
        let State::Bytes(cursor) = &mut self.state else { unreachable!("the loop ends at bytes") };
        if let Some(position) = self.pending_seek.take() {
            Pin::new(&mut *cursor).start_seek(position)?;
        }
        Poll::Ready(Ok(cursor))
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Bytes(cursor) => Pin::new(cursor).start_seek(position),
            _ => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn deferred_data_is_produced_once_when_first_used_and_reads_and_seeks_like_bytes() {
        let produced = Arc::new(AtomicBool::new(false));
        let flag = produced.clone();
        let mut data = SnapshotData::deferred(move || {
            assert!(!flag.swap(true, Ordering::SeqCst), "produced once");
            Ok(b"0123456789".to_vec())
        });
        assert!(!produced.load(Ordering::SeqCst), "nothing is produced before it is used");

        assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), 10);
        data.seek(SeekFrom::Start(4)).await.unwrap();
        let mut rest = String::new();
        data.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "456789");
        assert_eq!(data.into_bytes().await.unwrap(), b"0123456789");

        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        drop(SnapshotData::deferred(move || {
            flag.store(true, Ordering::SeqCst);
            Ok(Vec::new())
        }));
        assert!(!dropped.load(Ordering::SeqCst), "dropped unread, never produced");
    }

    #[tokio::test]
    async fn received_data_is_written_then_read_back_and_a_failed_copy_is_an_io_error() {
        let mut data = SnapshotData::from_bytes(Vec::new());
        data.write_all(b"chunk one, ").await.unwrap();
        data.write_all(b"chunk two").await.unwrap();
        data.shutdown().await.unwrap();
        assert_eq!(data.into_bytes().await.unwrap(), b"chunk one, chunk two");

        let failing = SnapshotData::deferred(|| Err(io::Error::other("storage engine: disk gone")));
        let err = failing.into_bytes().await.unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
    }
}

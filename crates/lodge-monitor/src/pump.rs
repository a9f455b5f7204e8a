//! One thread per child pipe: read, append to the log, repeat.
//!
//! Nothing is buffered between the read and the write, so followers see
//! bytes as soon as the child wrote them. Nothing is dropped either: when a
//! write fails (disk full, I/O error) the pump retries the unwritten rest
//! with a growing pause, and meanwhile does not read, so the pipe fills and
//! the child blocks; the guest is slowed, its output is kept.

use std::io::{self, Read};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use lodge_logs::RotatingWriter;

/// Bytes read from the pipe at once.
const READ_BUF: usize = 256 * 1024;
/// Pause bounds while a write keeps failing.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Starts a pump from `pipe` into `writer`; the thread returns the writer
/// once the pipe reached end of file (every writer of the pipe closed it).
pub(crate) fn spawn<R: Read + Send + 'static>(
    name: &'static str,
    mut pipe: R,
    mut writer: RotatingWriter,
) -> io::Result<JoinHandle<RotatingWriter>> {
    thread::Builder::new()
        .name(format!("pump-{name}"))
        .stack_size(128 * 1024)
        .spawn(move || {
            // Zeroed large allocations come from mmap: only pages a read
            // actually fills become resident.
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        eprintln!("lodge: reading the command's {name}: {err}");
                        break;
                    }
                };
                write_all_retrying(name, &mut writer, &buf[..n]);
                if let Some(err) = writer.take_error() {
                    eprintln!("lodge: {name} log: {err} (no output lost)");
                }
            }
            writer
        })
}

fn write_all_retrying(name: &str, writer: &mut RotatingWriter, mut data: &[u8]) {
    use std::io::Write;
    let mut pause = FIRST_PAUSE;
    let mut failing = false;
    while !data.is_empty() {
        match writer.write(data) {
            Ok(n) => {
                data = &data[n..];
                if failing {
                    eprintln!("lodge: {name} log: writing again");
                    failing = false;
                    pause = FIRST_PAUSE;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                if !failing {
                    eprintln!("lodge: {name} log: {err}; holding the output and retrying");
                    failing = true;
                }
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

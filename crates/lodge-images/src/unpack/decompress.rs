//! Layer decompression, chosen by content rather than by media type.

use std::io::{self, BufRead, BufReader, Read};

/// Decompresses by sniffing the first bytes (gzip, zstd or plain tar), so a
/// mislabelled media type does not matter.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 20, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dec = ruzstd::decoding::StreamingDecoder::new(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Box::new(dec))
    } else {
        Ok(Box::new(buf))
    }
}

//! The cached `date` header value of responses.

use std::time::{SystemTime, UNIX_EPOCH};

/// The IMF-fixdate of now, formatted once per second per thread.
pub(super) fn date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let s = httpdate::fmt_http_date(now);
        if s.len() == 29 {
            text.copy_from_slice(s.as_bytes());
        }
        c.set((secs, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_imf_fixdate_of_now() {
        let text = date();
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&text).unwrap()).unwrap();
        let off = SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default()
            .as_secs();
        assert!(off <= 2, "{off} s old");
        assert!(
            text.ends_with(b" GMT"),
            "{:?}",
            String::from_utf8_lossy(&text)
        );
    }
}

//! How status and report types look in JSON (the admin API's `/status` and
//! `/reload`): times as seconds since the Unix epoch, durations as seconds,
//! both as floats; paths as strings; hashes as hex. Used through
//! `#[serde(serialize_with = "..")]`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serializer;

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn epoch_seconds(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

pub(crate) fn time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(epoch_seconds(*time))
}

pub(crate) fn optional_time<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_f64(epoch_seconds(*time)),
        None => serializer.serialize_none(),
    }
}

pub(crate) fn duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

pub(crate) fn path<S: Serializer, P: AsRef<Path>>(path: &P, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&path.as_ref().display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_float_seconds_around_the_epoch() {
        assert_eq!(epoch_seconds(UNIX_EPOCH + Duration::from_millis(1500)), 1.5);
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2.0);
    }
}

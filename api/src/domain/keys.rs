//! API keys as their owners manage them (`/api/api-keys`, the dashboard's keys page): names, expiries, revocation.
//! A key opens everything its organization owns; revoking one ends the dashboard sessions it signed in too.

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::orgs::{self, KeyRow};

/// Longest key name accepted.
pub const MAX_NAME: usize = 100;

/// A key just made: the value is shown this once.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub row: KeyRow,
    pub value: String,
}

/// Makes a key named `name` for `org`, expiring at `expires_at` (Unix ms) if given. Names are unique among the
/// organization's unrevoked keys, since Daytona's endpoints name keys by name.
pub async fn create(app: &App, org: &str, name: &str, expires_at: Option<i64>) -> ApiResult<NewKey> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a key name is 1 to {MAX_NAME} characters without control characters"
        )));
    }
    let now = app.now();
    if expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::bad_request("expiresAt is in the past: give a time in the future or none"));
    }
    if orgs::list_keys(&app.db, org).await?.iter().any(|k| k.name == name) {
        return Err(ApiError::conflict(format!(
            "an API key named {name:?} already exists: revoke it or pick another name"
        )));
    }
    let (id, value) = orgs::create_api_key(&app.db, org, name, expires_at, now).await.map_err(|e| match e {
        orgs::KeyError::Db(e) => ApiError::from(e),
        orgs::KeyError::Random(e) => ApiError::from(e),
    })?;
    let row =
        orgs::key_by_id(&app.db, &id).await?.ok_or_else(|| ApiError::internal("api key", "missing after insert"))?;
    Ok(NewKey { row, value })
}

/// Revokes the organization's key named `name`: 404 when it has none.
pub async fn revoke(app: &App, org: &str, name: &str) -> ApiResult<()> {
    if orgs::revoke_keys_named(&app.db, org, name, app.now()).await? == 0 {
        return Err(ApiError::not_found(format!("no API key named {name:?}")));
    }
    Ok(())
}

/// Unix ms of an RFC 3339 time in UTC or with an offset (`2026-12-02T18:00:00Z`, `...T18:00:00.5+01:00`).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, da): (i32, u8, u8) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off.get(1..)?.split_once(':')?;
        (c, sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi, se): (u8, u8, u8) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).ok()?, da).ok()?;
    let time = time::Time::from_hms(h, mi, se).ok()?;
    let secs = time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp() - offset_secs;
    secs.checked_mul(1000)?.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_time("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.5Z"), Some(1_700_000_000_500));
        assert_eq!(parse_time("2023-11-14"), None);
        assert_eq!(parse_time("2023-13-14T22:13:20Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}

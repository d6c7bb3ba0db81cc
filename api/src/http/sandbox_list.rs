//! `GET /sandbox`: every query parameter the Daytona SDK 0.226.1 (and its generated `list_sandboxes`) can send is
//! honoured, and anything else is refused with a 400 naming it, so a filter is never ignored silently. Pages are
//! keyset-paginated on the sort key and the id; the cursor is opaque to clients.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sandbar_proto::runner::SandboxState;

use super::auth::Caller;
use super::dto::ListSandboxesResponse;
use super::error::{ApiError, ApiResult, Json, QueryPairs};
use crate::App;
use crate::domain::state;
use crate::store::sandboxes::{self as rows, ListFilter, SortKey, SortValue};

pub const MAX_LIST_LIMIT: i64 = 1000;

/// Every parameter `list` understands.
pub const PARAMS: &[&str] = &[
    "cursor",
    "limit",
    "id",
    "name",
    "labels",
    "includeErroredDeleted",
    "includeWarm",
    "states",
    "snapshots",
    "regionIds",
    "sandboxClasses",
    "minCpu",
    "maxCpu",
    "minMemoryGiB",
    "maxMemoryGiB",
    "minDiskGiB",
    "maxDiskGiB",
    "minGpu",
    "maxGpu",
    "isPublic",
    "isRecoverable",
    "createdAtAfter",
    "createdAtBefore",
    "lastEventAfter",
    "lastEventBefore",
    "autoDestroyAtAfter",
    "autoDestroyAtBefore",
    "sort",
    "order",
];

fn encode_cursor(v: &SortValue, id: &str) -> String {
    use base64::Engine as _;
    let raw = serde_json::json!([v, id]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: &str) -> ApiResult<(SortValue, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid cursor: pass the nextCursor of the previous page unchanged");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    serde_json::from_slice(&raw).map_err(|_| bad())
}

/// The values of a repeated (or comma-separated) parameter.
fn many(q: &QueryPairs, key: &str) -> Vec<String> {
    q.all(key).flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A number bound (the generated client sends ints or floats); a minimum rounds up, a maximum down, as the columns
/// hold whole numbers.
fn bound(q: &QueryPairs, key: &str, min: bool) -> ApiResult<Option<i64>> {
    let Some(v) = q.get(key).filter(|v| !v.is_empty()) else { return Ok(None) };
    let n: f64 = v
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| ApiError::bad_request(format!("query parameter {key} must be a number, got {v:?}")))?;
    let n = if min { n.ceil() } else { n.floor() };
    // Clamped: a bound beyond any value means the same as the largest.
    Ok(Some(n.clamp(-9.0e15, 9.0e15) as i64))
}

/// Milliseconds since the epoch of an ISO 8601 time as the SDK writes it (`2026-12-02T16:40:06.123456+0000`,
/// `...Z`, `...+00:00`, or without a zone: UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, mo, da) = (d.next()?.parse::<i32>().ok()?, d.next()?.parse::<u8>().ok()?, d.next()?.parse::<u8>().ok()?);
    if d.next().is_some() {
        return None;
    }
    // The zone: Z, or +HH[:]MM / -HH[:]MM (a '+' decoded from a query string may have become a space).
    let zone_at = rest.find(['Z', 'z', '+', '-', ' ']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let offset_min: i64 = match zone {
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (h, m) = digits.split_at(2);
            sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)
        }
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':');
    let (h, mi, se) = (t.next()?.parse::<u8>().ok()?, t.next()?.parse::<u8>().ok()?, t.next().unwrap_or("0"));
    let se = se.parse::<u8>().ok()?;
    if t.next().is_some() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u16 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).ok()?, da).ok()?;
    let time = time::Time::from_hms_milli(h, mi, se, ms).ok()?;
    let utc = time::PrimitiveDateTime::new(date, time).assume_utc();
    let ms = i64::try_from(utc.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(ms - offset_min * 60_000)
}

fn time_param(q: &QueryPairs, key: &str) -> ApiResult<Option<i64>> {
    match q.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse_time(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter {key} must be an ISO 8601 time like 2026-12-02T16:40:06Z, got {v:?}"
            ))
        }),
    }
}

/// Builds the filter from the query, refusing what it cannot honour.
fn filter(org: String, q: &QueryPairs, limit: i64) -> ApiResult<ListFilter> {
    if let Some((k, _)) = q.0.iter().find(|(k, _)| !PARAMS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?} for listing sandboxes (known: {})",
            PARAMS.join(", ")
        )));
    }
    let labels: BTreeMap<String, String> = match q.get("labels").filter(|l| !l.is_empty()) {
        Some(l) => serde_json::from_str(l).map_err(|e| {
            ApiError::bad_request(format!("labels must be a JSON object of strings, like {{\"k\":\"v\"}}: {e}"))
        })?,
        None => BTreeMap::new(),
    };
    let mut states = Vec::new();
    for s in many(q, "states") {
        let st = state::parse(&s);
        if st == SandboxState::Unknown && s != "unknown" {
            return Err(ApiError::bad_request(format!("unknown sandbox state {s:?} in states")));
        }
        states.push(st.as_str().to_owned());
    }
    let classes = many(q, "sandboxClasses");
    if let Some(c) = classes.iter().find(|c| !matches!(c.as_str(), "container" | "linux-vm" | "windows")) {
        return Err(ApiError::bad_request(format!(
            "unknown sandbox class {c:?} in sandboxClasses (linux-vm, container, windows)"
        )));
    }
    // Every sandbar sandbox is a container with no GPU and no auto-destroy time (no TTL).
    let no_container = !classes.is_empty() && !classes.iter().any(|c| c == "container");
    let gpu_min = bound(q, "minGpu", true)?.is_some_and(|g| g > 0);
    let gpu_max = bound(q, "maxGpu", false)?.is_some_and(|g| g < 0);
    let auto_destroy =
        time_param(q, "autoDestroyAtAfter")?.is_some() || time_param(q, "autoDestroyAtBefore")?.is_some();
    q.bool("includeWarm")?;
    let sort = match q.get("sort").filter(|s| !s.is_empty()) {
        None | Some("createdAt") => SortKey::Created,
        Some("name") => SortKey::Name,
        Some("cpu") => SortKey::Cpu,
        Some("memoryGib") => SortKey::Memory,
        Some("diskGib") => SortKey::Disk,
        Some("lastActivityAt") => SortKey::LastActivity,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "sort must be one of name, cpu, memoryGib, diskGib, lastActivityAt, createdAt; got {other:?}"
            )));
        }
    };
    let ascending = match q.get("order").filter(|s| !s.is_empty()) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => return Err(ApiError::bad_request(format!("order must be asc or desc, got {other:?}"))),
    };
    let gib = |key: &str, min: bool| bound(q, key, min);
    Ok(ListFilter {
        org,
        states,
        id_prefix: q.get("id").filter(|v| !v.is_empty()).map(str::to_owned),
        name_prefix: q.get("name").filter(|v| !v.is_empty()).map(str::to_owned),
        labels,
        snapshots: many(q, "snapshots"),
        targets: many(q, "regionIds"),
        cpu: (bound(q, "minCpu", true)?, bound(q, "maxCpu", false)?),
        memory: (gib("minMemoryGiB", true)?, gib("maxMemoryGiB", false)?),
        disk: (gib("minDiskGiB", true)?, gib("maxDiskGiB", false)?),
        public: q.bool("isPublic")?,
        recoverable: q.bool("isRecoverable")?,
        created: (time_param(q, "createdAtAfter")?, time_param(q, "createdAtBefore")?),
        last_activity: (time_param(q, "lastEventAfter")?, time_param(q, "lastEventBefore")?),
        nothing: no_container || gpu_min || gpu_max || auto_destroy,
        include_errored_deleted: q.bool("includeErroredDeleted")?.unwrap_or(false),
        sort,
        ascending,
        after: q.get("cursor").filter(|c| !c.is_empty()).map(decode_cursor).transpose()?,
        limit: limit + 1,
    })
}

/// `GET /sandbox`: newest first unless `sort`/`order` say otherwise.
pub async fn list(State(app): State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let limit = q.int("limit")?.unwrap_or(100);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")));
    }
    let f = filter(caller.organization_id, &q, limit)?;
    let sort = f.sort;
    let mut rows = rows::list(&app.db.read, f).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        rows.last().map(|r| encode_cursor(&sort.value(r), &r.id))
    } else {
        None
    };
    let items = rows.iter().map(|r| r.to_dto(&app)).collect();
    Ok(Json(ListSandboxesResponse { items, next_cursor }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        let c = encode_cursor(&SortValue::Int(12), "abc");
        assert_eq!(decode_cursor(&c).unwrap(), (SortValue::Int(12), "abc".into()));
        let c = encode_cursor(&SortValue::Text("n".into()), "abc");
        assert_eq!(decode_cursor(&c).unwrap(), (SortValue::Text("n".into()), "abc".into()));
        assert!(decode_cursor("!!").is_err());
    }

    #[test]
    fn times_as_the_sdk_writes_them() {
        let z = parse_time("2023-11-14T22:13:20.123Z").unwrap();
        assert_eq!(z, 1_700_000_000_123);
        assert_eq!(parse_time("2023-11-14T22:13:20.123000+0000"), Some(z));
        assert_eq!(parse_time("2023-11-14T22:13:20.123000 0000"), Some(z));
        assert_eq!(parse_time("2023-11-14T23:13:20.123+01:00"), Some(z));
        assert_eq!(parse_time("2023-11-14T22:13:20.123456"), Some(z));
        assert_eq!(parse_time("2023-11-14T22:13:20"), Some(1_700_000_000_000));
        for bad in ["", "2023-11-14", "2023-13-14T00:00:00", "2023-11-14T25:00:00", "x-y-zT1:2:3"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}

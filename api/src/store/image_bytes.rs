//! The `image_bytes` ledger: one row per image an organization's snapshot, build or fork left on a runner, with
//! its size in bytes; and the organizations' own image-bytes limits (`organizations.quota_image_bytes`).

use sqlx::AnyConnection;

/// An image to record.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The snapshot, build or fork (sandbox) the image belongs to.
    pub owner_id: &'a str,
    pub org: &'a str,
    /// `snapshot`, `build` or `fork`.
    pub kind: &'a str,
    pub runner_id: &'a str,
    pub image: &'a str,
    pub bytes: i64,
    pub now: i64,
}

/// Records an image (once per owner: a second record of the same owner is ignored).
pub async fn record(conn: &mut AnyConnection, e: Entry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO image_bytes (owner_id, organization_id, kind, runner_id, image_name, bytes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (owner_id) DO NOTHING",
    )
    .bind(e.owner_id)
    .bind(e.org)
    .bind(e.kind)
    .bind(e.runner_id)
    .bind(e.image)
    .bind(e.bytes)
    .bind(e.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops the row of `owner_id`'s image (its image is gone); how many rows went.
pub async fn forget(conn: &mut AnyConnection, owner_id: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM image_bytes WHERE owner_id = $1").bind(owner_id).execute(conn).await?;
    Ok(r.rows_affected())
}

/// Bytes of `org`'s recorded images.
pub async fn usage(conn: &mut AnyConnection, org: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM image_bytes WHERE organization_id = $1")
        .bind(org)
        .fetch_one(conn)
        .await
}

/// `org`'s own limit (`None`: the API's default applies).
pub async fn own_limit(conn: &mut AnyConnection, org: &str) -> Result<Option<i64>, sqlx::Error> {
    let limit: Option<Option<i64>> = sqlx::query_scalar("SELECT quota_image_bytes FROM organizations WHERE id = $1")
        .bind(org)
        .fetch_optional(conn)
        .await?;
    Ok(limit.flatten())
}

//! Incremental sync: `Query.changes`. A client fetches a calendar's stored events once (masters
//! of series, overrides and single events, page by page), keeps the `nextSyncToken`, and later
//! asks for what changed after it: every event created, changed or deleted since, each once, in
//! its current state (or only its id, when deleted), page by page, ending with a new token.
//!
//! A token names a position in the change log (a snapshot, see [`cal_storage::sync`]) and is
//! signed with a key every instance shares (HMAC-SHA256 over the calendar, the viewer and the
//! position), so it cannot be altered or used by another viewer or for another calendar. It is
//! valid as long as the change log still holds everything after it: once the pruner has removed
//! a row it could have missed, it is refused with `SYNC_TOKEN_EXPIRED`.
//!
//! Every value a sync answer shows is read from the database, never from a cache tier
//! ([`cal_cache::RequestStats::read_source`]): a token that moves a client past a change must
//! never come with the value from before it.

use super::types::{Event, Wants, prefetch};
use super::{RequestCtx, rc, viewer};
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, ID, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cal_domain::{CalendarId, EventId, UserId};
use cal_storage::sync::{ChangeKey, ChangedPage, Snapshot};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One page of a calendar's sync.
#[derive(SimpleObject)]
pub struct ChangeSet {
    /// The events of this page, each once.
    pub events: Vec<EventChange>,
    /// More follows: pass this as `since` for the next page. Null on the last page.
    pub next_page_token: Option<String>,
    /// On the last page: keep it, and pass it as `since` later to get what changed after this
    /// answer. Null while more pages follow.
    pub next_sync_token: Option<String>,
}

/// One stored event in a sync answer.
#[derive(SimpleObject)]
pub struct EventChange {
    /// The stored row's id (an override's own row id, not its occurrence id): what a client keys
    /// its copy by.
    pub id: ID,
    /// The event was deleted: drop it. Then only `id` is given.
    pub deleted: bool,
    /// The event as it is now; null when deleted.
    pub event: Option<Event>,
}

/// Where a sync stands; what a token carries, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
enum Position {
    /// A full sync's next page: live rows above `after`; once they are done, the changes after
    /// `at`, the snapshot its first page was read in.
    #[serde(rename = "f")]
    Full { at: Snapshot, after: i64 },
    /// An incremental sync's next page: changes between the two snapshots, after `after`.
    #[serde(rename = "c")]
    Changes {
        since: Snapshot,
        until: Snapshot,
        after: ChangeKey,
    },
    /// Up to date as of `at`: what a `nextSyncToken` carries.
    #[serde(rename = "s")]
    Synced { at: Snapshot },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Token format version.
    v: u8,
    calendar: i64,
    viewer: i64,
    #[serde(flatten)]
    position: Position,
}

const TOKEN_VERSION: u8 = 1;
/// Bytes of the HMAC-SHA256 tag kept in a token.
const TAG_BYTES: usize = 16;

fn mac(key: &[u8], payload: &[u8]) -> Hmac<sha2::Sha256> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac
}

fn encode(key: &[u8], calendar: CalendarId, viewer: UserId, position: Position) -> String {
    let claims = Claims {
        v: TOKEN_VERSION,
        calendar: calendar.get(),
        viewer: viewer.get(),
        position,
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let tag = mac(key, payload.as_bytes()).finalize().into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]))
}

/// The position `token` carries, if it is one this service signed for this calendar and viewer.
fn decode(key: &[u8], token: &str, calendar: CalendarId, viewer: UserId) -> Option<Position> {
    if token.len() > 2 * Snapshot::MAX_LEN {
        return None;
    }
    let (payload, tag) = token.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if tag.len() != TAG_BYTES {
        return None;
    }
    mac(key, payload.as_bytes())
        .verify_truncated_left(&tag)
        .ok()?;
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    (claims.v == TOKEN_VERSION
        && claims.calendar == calendar.get()
        && claims.viewer == viewer.get())
    .then_some(claims.position)
}

/// Checks that `token` is one of `calendar`'s for `viewer` (BAD_USER_INPUT otherwise).
pub(crate) fn verify(
    key: &[u8],
    token: &str,
    calendar: CalendarId,
    viewer: UserId,
) -> ApiResult<()> {
    decode(key, token, calendar, viewer)
        .map(|_| ())
        .ok_or_else(invalid_token)
}

fn invalid_token() -> ApiError {
    ApiError::bad_input(
        "`since` is not a sync token of this calendar for this viewer: sync again without `since`",
    )
}

/// `Query.changes`.
pub(crate) async fn changes(
    ctx: &Context<'_>,
    calendar_id: ID,
    since: Option<String>,
    first: Option<i32>,
) -> ApiResult<ChangeSet> {
    let r = rc(ctx);
    viewer(ctx)?;
    let calendar = CalendarId::parse(&calendar_id)?;
    let max = r.config.max_page_size;
    let limit = match first {
        None => r.config.default_page_size.max(1),
        Some(n) if n >= 1 && n as usize <= max => n as usize,
        Some(n) => {
            return Err(ApiError::bad_input(format!(
                "`first` must be between 1 and {max} (got {n})"
            )));
        }
    };
    // From here on every value comes from the database (see the module's comment); the access
    // check too, so a revoked member stops at once.
    r.cache_stats.read_source();
    let wants = Wants::of_event(&ctx.look_ahead().field("events").field("event"));
    page(r, calendar, since.as_deref(), limit, wants).await
}

/// Checks that the viewer may sync `calendar` (reader role or above; FORBIDDEN otherwise) and
/// answers the key its tokens are signed with.
pub(crate) async fn admit(r: &RequestCtx, calendar: CalendarId) -> ApiResult<Arc<[u8]>> {
    let (_, role) = r.calendar_with_role(calendar).await?;
    if !role.can_read_details() {
        return Err(ApiError::Forbidden);
    }
    Ok(r.store.sync_token_key().await?)
}

/// A token for "up to date as of now", for a viewer already admitted.
pub(crate) async fn token_of_now(
    r: &RequestCtx,
    key: &[u8],
    calendar: CalendarId,
) -> ApiResult<String> {
    let at = r.store.current_snapshot().await?;
    Ok(encode(
        key,
        calendar,
        r.viewer_id()?,
        Position::Synced { at },
    ))
}

/// One page of `calendar`'s sync for the viewer of `r`, whose values must come from the
/// database ([`cal_cache::RequestStats::read_source`]), with what `wants` names prefetched.
pub(crate) async fn page(
    r: &RequestCtx,
    calendar: CalendarId,
    since: Option<&str>,
    limit: usize,
    wants: Wants,
) -> ApiResult<ChangeSet> {
    let me = r.viewer_id()?;
    // An oversized token is refused before any statement.
    if since.is_some_and(|t| t.len() > 2 * Snapshot::MAX_LEN) {
        return Err(invalid_token());
    }
    let key = admit(r, calendar).await?;
    let position = since
        .map(|t| decode(&key, t, calendar, me).ok_or_else(invalid_token))
        .transpose()?;
    let fetch = limit as i64 + 1;
    let token = |position| Some(encode(&key, calendar, me, position));

    let (mut ids, next_page, next_sync): (Vec<EventId>, _, _) = match position {
        None | Some(Position::Full { .. }) => {
            let (at, after) = match position {
                Some(Position::Full { at, after }) => (Some(at), after),
                _ => (None, 0),
            };
            let page = r.store.live_events_page(calendar, after, fetch).await?;
            let at = at.unwrap_or(page.snapshot);
            let mut ids = page.events;
            if ids.len() > limit {
                ids.truncate(limit);
                let after = ids.last().map_or(after, |id| id.get());
                (ids, token(Position::Full { at, after }), None)
            } else {
                (ids, None, token(Position::Synced { at }))
            }
        }
        Some(Position::Synced { at }) => {
            changed(
                r,
                calendar,
                at,
                None,
                ChangeKey::default(),
                fetch,
                limit,
                &token,
            )
            .await?
        }
        Some(Position::Changes {
            since,
            until,
            after,
        }) => changed(r, calendar, since, Some(until), after, fetch, limit, &token).await?,
    };

    // Current state of every listed row (one statement), then what the selection shows of them.
    ids.dedup();
    let loaded = r
        .loaders
        .events
        .try_load_many(ids.clone())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        rows.push(match loaded.get(&id) {
            Some(Ok(row)) => (id, row.clone()),
            Some(Err(e)) => return Err(e.clone().into()),
            None => (id, None),
        });
    }
    answer(r, rows, wants, next_page, next_sync).await
}

/// A page of changes after `since` as a subscription sends it: like [`page`], but the access
/// check, the changed rows and their current state come from one statement
/// ([`cal_storage::Store::live_changes`]), run by `live` (on a thread and pool of the
/// subscriptions' own). A full sync's token takes [`page`]'s way.
pub(crate) async fn live_page(
    r: &RequestCtx,
    live: &crate::live::LiveThread,
    calendar: CalendarId,
    since: &str,
    limit: usize,
    wants: Wants,
) -> ApiResult<ChangeSet> {
    let me = r.viewer_id()?;
    let key = r.store.sync_token_key().await?;
    let position = decode(&key, since, calendar, me).ok_or_else(invalid_token)?;
    let (since, until, after) = match position {
        Position::Full { .. } => return page(r, calendar, Some(since), limit, wants).await,
        Position::Synced { at } => (at, None, ChangeKey::default()),
        Position::Changes {
            since,
            until,
            after,
        } => (since, Some(until), after),
    };
    let read_since = since.clone();
    let live = live
        .read(move |store| async move {
            let until = until.as_ref();
            let fetch = limit as i64 + 1;
            store
                .live_changes(me, calendar, &read_since, until, after, fetch)
                .await
        })
        .await?;
    if !live.role.is_some_and(|role| role.can_read_details()) {
        return Err(ApiError::Forbidden);
    }
    let (until, events) = match live.page {
        ChangedPage::Expired => return Err(ApiError::SyncTokenExpired),
        ChangedPage::Changes { until, events } => (until, events),
    };
    let token = |position| Some(encode(&key, calendar, me, position));
    let (rows, next_page, next_sync) = paged(events, since, until, after, limit, &token);
    let rows = rows
        .into_iter()
        .map(|(key, row)| (EventId::new(key.event), row.map(Arc::new)))
        .collect();
    answer(r, rows, wants, next_page, next_sync).await
}

/// The page's events in their current state (`None`: deleted), with what `wants` names
/// prefetched.
async fn answer(
    r: &RequestCtx,
    rows: Vec<(EventId, Option<Arc<cal_domain::Event>>)>,
    wants: Wants,
    next_page_token: Option<String>,
    next_sync_token: Option<String>,
) -> ApiResult<ChangeSet> {
    let live: Vec<Arc<cal_domain::Event>> =
        rows.iter().filter_map(|(_, row)| row.clone()).collect();
    prefetch(r, &live, wants).await?;
    let events = rows
        .into_iter()
        .map(|(id, row)| EventChange {
            id: ID(id.get().to_string()),
            deleted: row.is_none(),
            event: row.map(Event::row),
        })
        .collect();
    Ok(ChangeSet {
        events,
        next_page_token,
        next_sync_token,
    })
}

/// The first `limit` of `events` (changes after `after`, between `since` and `until`) and the
/// token that follows them: the next page's, or the sync token once none is left.
fn paged<T>(
    mut events: Vec<(ChangeKey, T)>,
    since: Snapshot,
    until: Snapshot,
    after: ChangeKey,
    limit: usize,
    token: &impl Fn(Position) -> Option<String>,
) -> (Vec<(ChangeKey, T)>, Option<String>, Option<String>) {
    if events.len() > limit {
        events.truncate(limit);
        let after = events.last().map_or(after, |(k, _)| *k);
        let next = token(Position::Changes {
            since,
            until,
            after,
        });
        (events, next, None)
    } else {
        (events, None, token(Position::Synced { at: until }))
    }
}

type Page = (Vec<EventId>, Option<String>, Option<String>);

/// A page of the events changed after `since` (and before `until`, once a first page fixed it).
#[allow(clippy::too_many_arguments)]
async fn changed(
    r: &RequestCtx,
    calendar: CalendarId,
    since: Snapshot,
    until: Option<Snapshot>,
    after: ChangeKey,
    fetch: i64,
    limit: usize,
    token: &impl Fn(Position) -> Option<String>,
) -> ApiResult<Page> {
    match r
        .store
        .changed_events_page(calendar, &since, until.as_ref(), after, fetch)
        .await?
    {
        ChangedPage::Expired => Err(ApiError::SyncTokenExpired),
        ChangedPage::Changes { until, events } => {
            let (events, next_page, next_sync) = paged(events, since, until, after, limit, token);
            let ids = events.into_iter().map(|(_, id)| id).collect();
            Ok((ids, next_page, next_sync))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(s: &str) -> Snapshot {
        Snapshot::parse(s).unwrap()
    }

    #[test]
    fn a_token_round_trips_for_its_calendar_and_viewer_only() {
        let key = b"0123456789abcdef0123456789abcdef";
        let (cal, me) = (CalendarId::new(7), UserId::new(3));
        let positions = [
            Position::Synced {
                at: snapshot("100:105:101,103"),
            },
            Position::Full {
                at: snapshot("9:9:"),
                after: 42,
            },
            Position::Changes {
                since: snapshot("9:9:"),
                until: snapshot("12:14:13"),
                after: ChangeKey {
                    outbox_id: 5,
                    event: 6,
                },
            },
        ];
        for p in positions {
            let t = encode(key, cal, me, p.clone());
            assert_eq!(decode(key, &t, cal, me), Some(p), "{t}");
            assert_eq!(decode(key, &t, CalendarId::new(8), me), None);
            assert_eq!(decode(key, &t, cal, UserId::new(4)), None);
            assert_eq!(decode(b"another key", &t, cal, me), None);
        }
    }

    #[test]
    fn an_altered_token_is_refused() {
        let key = b"k";
        let (cal, me) = (CalendarId::new(1), UserId::new(1));
        let t = encode(
            key,
            cal,
            me,
            Position::Synced {
                at: snapshot("5:5:"),
            },
        );
        // Change one character anywhere: payload or tag.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            if altered != t {
                assert_eq!(decode(key, &altered, cal, me), None, "{altered}");
            }
        }
        // A payload re-encoded by hand with another position, keeping the old tag.
        let (_, tag) = t.split_once('.').unwrap();
        let forged =
            URL_SAFE_NO_PAD.encode(br#"{"v":1,"calendar":1,"viewer":1,"k":"s","at":"1:1:"}"#);
        assert_eq!(decode(key, &format!("{forged}.{tag}"), cal, me), None);
        for junk in ["", ".", "abc", "a.b.c", "%%%.%%%"] {
            assert_eq!(decode(key, junk, cal, me), None, "{junk}");
        }
    }
}

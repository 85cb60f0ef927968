//! Direct execution: a validated query whose every field is one of the plain ones below is
//! answered by walking its selection over the loaded facts and writing the JSON response straight
//! into a buffer, instead of through async-graphql's executor.
//!
//! Why: async-graphql resolves each field as a boxed future (whose size is that of the type's
//! largest resolver) and builds a value tree that is then serialized and dropped. A month view has
//! ~2,000 fields; that machinery was about 40% of a cold month view's server CPU, more than
//! PostgreSQL spends on it. Here a field costs a match and a write.
//!
//! What stays the same, because this module shares it with the resolvers rather than copying it:
//! loading (the request's [`Loaders`](crate::loaders::Loaders) and the cache tiers, so the SQL
//! statements, dependencies and cache figures are the ones the resolvers would produce),
//! authorization ([`super::RequestCtx::calendar_with_role`], [`super::types::Calendar`]'s details
//! rule), paging ([`super::types::events_page`]), the field values ([`super::types::Event`]'s
//! methods) and scalar formats (async-graphql's own: RFC 3339 through chrono, enum names from
//! the derived tables). Parsing, validation (depth, complexity, types, variables) and argument
//! coercion are async-graphql's too.
//!
//! What makes it step aside ([`Fallback`]), after which the request runs through async-graphql
//! as if this module did not exist: any field or type not listed here, any directive, a response
//! key selected twice at one level, a variable nested inside a list or object argument, and any
//! resolver error — so errors, partial results and null propagation are always async-graphql's.
//! Equality of the two paths' bytes is tested over every field this module serves
//! (`tests/it/direct.rs`).

use super::RequestCtx;
use super::types::{Event, EventPage, PageArgs, Wants, events_page};
use crate::loaders::Booking;
use async_graphql::parser::types::{
    ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::resolver_utils::EnumType;
use async_graphql::{InputType, Name, Variables};
use async_graphql_value::{ConstValue, Value};
use cal_domain as domain;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

/// This request is not one direct execution answers; run it through async-graphql.
#[derive(Debug)]
pub(crate) struct Fallback;

type R<T> = Result<T, Fallback>;

impl From<crate::error::ApiError> for Fallback {
    fn from(_: crate::error::ApiError) -> Self {
        Fallback
    }
}

/// The response body (`{"data":…}`) of the operation, or [`Fallback`]. `doc` must have passed
/// async-graphql's validation for `operation` and `variables`.
pub(crate) async fn execute(
    r: &RequestCtx,
    doc: &ExecutableDocument,
    operation: Option<&str>,
    variables: &Variables,
) -> R<Vec<u8>> {
    let op = crate::documents::operation(doc, operation).ok_or(Fallback)?;
    if !op.directives.is_empty() {
        return Err(Fallback);
    }
    let x = Exec { doc, op, variables };
    let mut out = Vec::with_capacity(16 * 1024);
    out.extend_from_slice(b"{\"data\":");
    x.query(r, &op.selection_set.node, &mut out).await?;
    out.push(b'}');
    Ok(out)
}

struct Exec<'a> {
    doc: &'a ExecutableDocument,
    op: &'a OperationDefinition,
    variables: &'a Variables,
}

/// Field lists of the selection sets already flattened while writing (a page repeats the same
/// event selection for every event).
#[derive(Default)]
struct Memo<'a> {
    fields: HashMap<usize, std::rc::Rc<Vec<&'a Field>>>,
}

/// What one `Calendar.events` selection needs, loaded before anything is written.
struct Loaded {
    page: EventPage,
    attendees: foldhash::HashMap<domain::EventId, Arc<Vec<domain::Attendee>>>,
    bookings: foldhash::HashMap<domain::EventId, Arc<Vec<Booking>>>,
    users: foldhash::HashMap<domain::UserId, Arc<domain::User>>,
}

impl<'a> Exec<'a> {
    /// [`Exec::fields`], flattened once per selection set and kept in `memo`.
    fn fields_of(
        &self,
        memo: &mut Memo<'a>,
        set: &'a SelectionSet,
        ty: &str,
    ) -> R<std::rc::Rc<Vec<&'a Field>>> {
        let at = std::ptr::from_ref(set) as usize;
        if let Some(f) = memo.fields.get(&at) {
            return Ok(f.clone());
        }
        let f = std::rc::Rc::new(self.fields(set, ty)?);
        memo.fields.insert(at, f.clone());
        Ok(f)
    }

    /// The fields of `set` for an object of type `ty`: fragments (spreads and inline) whose type
    /// condition is `ty` (or absent) are flattened in place.
    fn fields(&self, set: &'a SelectionSet, ty: &str) -> R<Vec<&'a Field>> {
        let mut out = Vec::new();
        let mut keys = HashSet::new();
        self.collect(set, ty, &mut out, &mut keys, 0)?;
        Ok(out)
    }

    fn collect(
        &self,
        set: &'a SelectionSet,
        ty: &str,
        out: &mut Vec<&'a Field>,
        keys: &mut HashSet<&'a str>,
        depth: usize,
    ) -> R<()> {
        if depth > 8 {
            return Err(Fallback);
        }
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    if !f.node.directives.is_empty()
                        || !keys.insert(f.node.response_key().node.as_str())
                    {
                        return Err(Fallback);
                    }
                    out.push(&f.node);
                }
                Selection::InlineFragment(frag) => {
                    let frag = &frag.node;
                    if !frag.directives.is_empty()
                        || frag
                            .type_condition
                            .as_ref()
                            .is_some_and(|c| c.node.on.node.as_str() != ty)
                    {
                        return Err(Fallback);
                    }
                    self.collect(&frag.selection_set.node, ty, out, keys, depth + 1)?;
                }
                Selection::FragmentSpread(spread) => {
                    let spread = &spread.node;
                    let def = self
                        .doc
                        .fragments
                        .get(&spread.fragment_name.node)
                        .ok_or(Fallback)?;
                    if !spread.directives.is_empty()
                        || !def.node.directives.is_empty()
                        || def.node.type_condition.node.on.node.as_str() != ty
                    {
                        return Err(Fallback);
                    }
                    self.collect(&def.node.selection_set.node, ty, out, keys, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Argument `name` of `f`, coerced as async-graphql coerces it (absent, or an omitted
    /// variable without default: `parse(None)`).
    fn arg<T: InputType>(&self, f: &Field, name: &str) -> R<T> {
        let value = match f.arguments.iter().find(|(n, _)| n.node.as_str() == name) {
            None => None,
            Some((_, v)) => match &v.node {
                Value::Variable(var) => self.variable(var)?,
                other => Some(
                    other
                        .clone()
                        .into_const_with(|_| Err::<ConstValue, _>(Fallback))?,
                ),
            },
        };
        T::parse(value).map_err(|_| Fallback)
    }

    fn variable(&self, name: &Name) -> R<Option<ConstValue>> {
        let def = self
            .op
            .variable_definitions
            .iter()
            .find(|d| d.node.name.node == *name)
            .ok_or(Fallback)?;
        Ok(self
            .variables
            .get(&def.node.name.node)
            .cloned()
            .or_else(|| def.node.default_value.as_ref().map(|v| v.node.clone())))
    }

    async fn query(&self, r: &RequestCtx, set: &'a SelectionSet, out: &mut Vec<u8>) -> R<()> {
        let fields = self.fields(set, "QueryRoot")?;
        // Everything is loaded before anything is written: a field that fails must leave no
        // half-written answer behind (the caller then runs async-graphql).
        let mut calendars = Vec::new();
        for f in &fields {
            match f.name.node.as_str() {
                "__typename" => calendars.push(None),
                "calendar" => {
                    let id: async_graphql::ID = self.arg(f, "id")?;
                    let id = domain::CalendarId::parse(&id).map_err(|_| Fallback)?;
                    let (cal, role) = r.calendar_with_role(id).await?;
                    let pages = self
                        .calendar_pages(r, &cal, role, &f.selection_set.node)
                        .await?;
                    calendars.push(Some((cal, role, pages)));
                }
                _ => return Err(Fallback),
            }
        }
        out.push(b'{');
        for (i, (f, cal)) in fields.iter().zip(&calendars).enumerate() {
            comma(out, i);
            key(out, f);
            match cal {
                None => string(out, "QueryRoot"),
                Some((cal, role, pages)) => self.calendar(
                    out,
                    &mut Memo::default(),
                    &f.selection_set.node,
                    cal,
                    *role,
                    pages,
                )?,
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// Loads every `events` selection of a calendar, in selection order.
    async fn calendar_pages(
        &self,
        r: &RequestCtx,
        cal: &domain::Calendar,
        role: domain::Role,
        set: &'a SelectionSet,
    ) -> R<Vec<Loaded>> {
        let mut pages = Vec::new();
        for f in self.fields(set, "Calendar")? {
            if f.name.node.as_str() != "events" {
                continue;
            }
            if !role.can_read_details() {
                return Err(Fallback);
            }
            let args = PageArgs {
                from: self.arg(f, "from")?,
                to: self.arg(f, "to")?,
                first: self.arg(f, "first")?,
                after: self.arg(f, "after")?,
                time_zone: self.arg(f, "timeZone")?,
            };
            let wants = self.wants(&f.selection_set.node)?;
            let page = events_page(r, cal, args, wants).await?;
            pages.push(gather(r, page, wants).await?);
        }
        Ok(pages)
    }

    /// What the selection under a connection asks for (as the resolver's look-ahead finds it).
    fn wants(&self, conn: &'a SelectionSet) -> R<Wants> {
        let mut nodes = Vec::new();
        for f in self.fields(conn, "EventConnection")? {
            match f.name.node.as_str() {
                "nodes" => nodes.push(&f.selection_set.node),
                "edges" => {
                    for e in self.fields(&f.selection_set.node, "EventEdge")? {
                        if e.name.node.as_str() == "node" {
                            nodes.push(&e.selection_set.node);
                        }
                    }
                }
                _ => {}
            }
        }
        let mut w = Wants::default();
        for set in nodes {
            for f in self.fields(set, "Event")? {
                match f.name.node.as_str() {
                    "organizer" => w.organizer = true,
                    "reservations" => w.reservations = true,
                    "attendees" => {
                        w.attendees = true;
                        w.attendee_users |= self
                            .fields(&f.selection_set.node, "Attendee")?
                            .iter()
                            .any(|a| a.name.node.as_str() == "user");
                    }
                    _ => {}
                }
            }
        }
        Ok(w)
    }

    #[allow(clippy::too_many_arguments)]
    fn calendar(
        &self,
        out: &mut Vec<u8>,
        memo: &mut Memo<'a>,
        set: &'a SelectionSet,
        cal: &domain::Calendar,
        role: domain::Role,
        pages: &[Loaded],
    ) -> R<()> {
        let mut pages = pages.iter();
        object(out, &self.fields(set, "Calendar")?, |out, f| {
            match f.name.node.as_str() {
                "__typename" => string(out, "Calendar"),
                "id" => string(out, &cal.id.to_string()),
                "name" => string(out, &cal.name),
                "description" if role.can_read_details() => {
                    opt_string(out, cal.description.as_deref())
                }
                "timeZone" => string(out, &cal.time_zone),
                "version" => number(out, cal.version),
                "myRole" => string(out, enum_name(super::types::CalendarRole::from(role))?),
                "events" => {
                    let loaded = pages.next().ok_or(Fallback)?;
                    self.connection(out, memo, &f.selection_set.node, loaded)?;
                }
                _ => return Err(Fallback),
            }
            Ok(())
        })
    }

    fn connection(
        &self,
        out: &mut Vec<u8>,
        memo: &mut Memo<'a>,
        set: &'a SelectionSet,
        l: &Loaded,
    ) -> R<()> {
        object(out, &self.fields(set, "EventConnection")?, |out, f| {
            match f.name.node.as_str() {
                "__typename" => string(out, "EventConnection"),
                "edges" => {
                    let fields = self.fields(&f.selection_set.node, "EventEdge")?;
                    array(out, &l.page.edges, |out, (cursor, event)| {
                        object(out, &fields, |out, e| {
                            match e.name.node.as_str() {
                                "__typename" => string(out, "EventEdge"),
                                "cursor" => string(out, cursor),
                                "node" => self.event(out, memo, &e.selection_set.node, event, l)?,
                                _ => return Err(Fallback),
                            }
                            Ok(())
                        })
                    })?;
                }
                "nodes" => array(out, &l.page.edges, |out, (_, event)| {
                    self.event(out, memo, &f.selection_set.node, event, l)
                })?,
                "pageInfo" => {
                    let first = l.page.edges.first().map(|(c, _)| c.as_str());
                    let last = l.page.edges.last().map(|(c, _)| c.as_str());
                    object(
                        out,
                        &self.fields(&f.selection_set.node, "PageInfo")?,
                        |out, p| {
                            match p.name.node.as_str() {
                                "__typename" => string(out, "PageInfo"),
                                "hasPreviousPage" => boolean(out, l.page.has_previous),
                                "hasNextPage" => boolean(out, l.page.has_next),
                                "startCursor" => opt_string(out, first),
                                "endCursor" => opt_string(out, last),
                                _ => return Err(Fallback),
                            }
                            Ok(())
                        },
                    )?;
                }
                _ => return Err(Fallback),
            }
            Ok(())
        })
    }

    fn event(
        &self,
        out: &mut Vec<u8>,
        memo: &mut Memo<'a>,
        set: &'a SelectionSet,
        ev: &Event,
        l: &Loaded,
    ) -> R<()> {
        let row = &ev.row;
        let fields = self.fields_of(memo, set, "Event")?;
        object(out, &fields, |out, f| {
            match f.name.node.as_str() {
                "__typename" => string(out, "Event"),
                "id" => string(out, &ev.id_text()),
                "title" => string(out, &row.title),
                "description" => opt_string(out, row.description.as_deref()),
                "location" => opt_string(out, row.location.as_deref()),
                "startTime" => string(out, &ev.start_rendered().to_rfc3339()),
                "endTime" => string(out, &ev.end_rendered().to_rfc3339()),
                "startDate" => opt_date(out, ev.first_date()),
                "endDate" => opt_date(out, ev.end_day()),
                "timeZone" => string(out, &row.time_zone),
                "allDay" => boolean(out, row.all_day),
                "status" => string(out, enum_name(super::types::EventStatus::from(row.status))?),
                "transparency" => string(
                    out,
                    enum_name(super::types::Transparency::from(row.transparency))?,
                ),
                "rrule" => opt_string(out, row.rrule.as_deref()),
                "exdates" => array(out, &row.exdates, |out, t| {
                    string(out, &t.to_rfc3339());
                    Ok(())
                })?,
                "recurringEventId" => {
                    opt_string(out, ev.recurring_id().map(|i| i.to_string()).as_deref())
                }
                "originalStartTime" => opt_string(
                    out,
                    ev.original_start_rendered()
                        .map(|t| t.to_rfc3339())
                        .as_deref(),
                ),
                "isRecurring" => boolean(out, ev.recurs()),
                "version" => number(out, row.version),
                "createdAt" => string(out, &row.created_at.to_rfc3339()),
                "updatedAt" => string(out, &row.updated_at.to_rfc3339()),
                "organizer" => {
                    let user = l.users.get(&row.organizer_id).ok_or(Fallback)?;
                    let fields = self.fields_of(memo, &f.selection_set.node, "User")?;
                    self.user(out, &fields, user)?;
                }
                "attendees" => {
                    let list = l.attendees.get(&row.id).ok_or(Fallback)?;
                    let fields = self.fields_of(memo, &f.selection_set.node, "Attendee")?;
                    array(out, list.iter(), |out, a| {
                        self.attendee(out, memo, &fields, a, l)
                    })?;
                }
                "reservations" => {
                    let list = l.bookings.get(&row.id).ok_or(Fallback)?;
                    let fields = self.fields_of(memo, &f.selection_set.node, "Reservation")?;
                    array(out, ev.own_bookings(list), |out, b| {
                        self.reservation(out, memo, &fields, b)
                    })?;
                }
                _ => return Err(Fallback),
            }
            Ok(())
        })
    }

    fn user(&self, out: &mut Vec<u8>, fields: &[&'a Field], u: &domain::User) -> R<()> {
        object(out, fields, |out, f| {
            match f.name.node.as_str() {
                "__typename" => string(out, "User"),
                "id" => string(out, &u.id.to_string()),
                "name" => string(out, &u.name),
                "avatarUrl" => opt_string(out, u.avatar_url.as_deref()),
                "timeZone" => string(out, &u.time_zone),
                // `email` (here and on `Attendee`) is not served: who may see it is the
                // resolver's rule alone (`emails.rs`).
                _ => return Err(Fallback),
            }
            Ok(())
        })
    }

    fn attendee(
        &self,
        out: &mut Vec<u8>,
        memo: &mut Memo<'a>,
        fields: &[&'a Field],
        a: &domain::Attendee,
        l: &Loaded,
    ) -> R<()> {
        object(out, fields, |out, f| {
            match f.name.node.as_str() {
                "__typename" => string(out, "Attendee"),
                "user" => {
                    let user = l.users.get(&a.user_id).ok_or(Fallback)?;
                    let fields = self.fields_of(memo, &f.selection_set.node, "User")?;
                    self.user(out, &fields, user)?;
                }
                "name" => opt_string(out, a.name.as_deref()),
                "responseStatus" => string(
                    out,
                    enum_name(super::types::ResponseStatus::from(a.response_status))?,
                ),
                "isOptional" => boolean(out, a.is_optional),
                _ => return Err(Fallback),
            }
            Ok(())
        })
    }

    fn reservation(
        &self,
        out: &mut Vec<u8>,
        memo: &mut Memo<'a>,
        fields: &[&'a Field],
        (r, res): &Booking,
    ) -> R<()> {
        object(out, fields, |out, f| {
            match f.name.node.as_str() {
                "__typename" => string(out, "Reservation"),
                "id" => string(out, &r.id.to_string()),
                "eventId" => string(out, &r.event_id.to_string()),
                "startTime" => string(out, &r.start_time.to_rfc3339()),
                "endTime" => string(out, &r.end_time.to_rfc3339()),
                "status" => string(
                    out,
                    enum_name(super::types::ReservationStatus::from(r.status))?,
                ),
                "resource" => {
                    let fields = self.fields_of(memo, &f.selection_set.node, "Resource")?;
                    object(out, &fields, |out, g| {
                        match g.name.node.as_str() {
                            "__typename" => string(out, "Resource"),
                            "id" => string(out, &res.id.to_string()),
                            "name" => string(out, &res.name),
                            "kind" => {
                                string(out, enum_name(super::types::ResourceKind::from(res.kind))?)
                            }
                            "capacity" => match res.capacity {
                                Some(c) => number(out, i64::from(c)),
                                None => out.extend_from_slice(b"null"),
                            },
                            "location" => opt_string(out, res.location.as_deref()),
                            _ => return Err(Fallback),
                        }
                        Ok(())
                    })?;
                }
                _ => return Err(Fallback),
            }
            Ok(())
        })
    }
}

/// The maps a page's fields read: attendee lists, bookings and users, all already in the
/// loaders' memo after [`events_page`]'s prefetch (no statement is sent here).
async fn gather(r: &RequestCtx, page: EventPage, wants: Wants) -> R<Loaded> {
    let ids: Vec<domain::EventId> = {
        let mut ids: Vec<domain::EventId> = page.edges.iter().map(|(_, e)| e.row.id).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let loaders = &r.loaders;
    let mut loaded = Loaded {
        page,
        attendees: Default::default(),
        bookings: Default::default(),
        users: Default::default(),
    };
    if ids.is_empty() {
        return Ok(loaded);
    }
    if wants.attendees {
        for (id, v) in loaders
            .attendees
            .try_load_many(ids.clone())
            .await
            .map_err(|_| Fallback)?
        {
            loaded.attendees.insert(id, v.map_err(|_| Fallback)?);
        }
    }
    if wants.reservations {
        for (id, v) in loaders
            .reservations
            .try_load_many(ids)
            .await
            .map_err(|_| Fallback)?
        {
            loaded.bookings.insert(id, v.map_err(|_| Fallback)?);
        }
    }
    let mut users: Vec<domain::UserId> = Vec::new();
    if wants.organizer {
        users.extend(loaded.page.edges.iter().map(|(_, e)| e.row.organizer_id));
    }
    if wants.attendee_users {
        users.extend(
            loaded
                .attendees
                .values()
                .flat_map(|l| l.iter().map(|a| a.user_id)),
        );
    }
    if !users.is_empty() {
        users.sort();
        users.dedup();
        for (id, v) in loaders
            .users
            .try_load_many(users)
            .await
            .map_err(|_| Fallback)?
        {
            // A referenced user that does not exist is the resolver's internal error.
            loaded
                .users
                .insert(id, v.map_err(|_| Fallback)?.ok_or(Fallback)?);
        }
    }
    Ok(loaded)
}

/// `{"key":value,…}` over `fields`, each value written by `value`.
fn object<'f>(
    out: &mut Vec<u8>,
    fields: &[&'f Field],
    mut value: impl FnMut(&mut Vec<u8>, &'f Field) -> R<()>,
) -> R<()> {
    out.push(b'{');
    for (i, f) in fields.iter().enumerate() {
        comma(out, i);
        key(out, f);
        value(out, f)?;
    }
    out.push(b'}');
    Ok(())
}

/// `[item,…]`, each written by `item`.
fn array<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut item: impl FnMut(&mut Vec<u8>, T) -> R<()>,
) -> R<()> {
    out.push(b'[');
    for (i, x) in items.into_iter().enumerate() {
        comma(out, i);
        item(out, x)?;
    }
    out.push(b']');
    Ok(())
}

fn comma(out: &mut Vec<u8>, i: usize) {
    if i > 0 {
        out.push(b',');
    }
}

fn key(out: &mut Vec<u8>, f: &Field) {
    string(out, f.response_key().node.as_str());
    out.push(b':');
}

fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_date(out: &mut Vec<u8>, d: Option<chrono::NaiveDate>) {
    match d {
        Some(d) => string(out, &d.format("%Y-%m-%d").to_string()),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn number(out: &mut Vec<u8>, n: i64) {
    write!(out, "{n}").expect("writing to a Vec cannot fail");
}

/// The GraphQL name of an enum value, from the table async-graphql derived.
fn enum_name<T: EnumType + PartialEq>(v: T) -> R<&'static str> {
    T::items()
        .iter()
        .find(|item| item.value == v)
        .map(|item| item.name)
        .ok_or(Fallback)
}

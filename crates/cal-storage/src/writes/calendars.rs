//! Users, resources and calendars: creating them, and sharing a calendar with a user or taking
//! the share back.

use super::Result;
use crate::rows::{self, *};
use crate::{StorageError, Store};
use cal_domain::*;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection};

impl Store {
    pub async fn create_user(
        &self,
        email: &str,
        name: &str,
        avatar_url: Option<&str>,
    ) -> Result<User> {
        let sql = format!(
            "INSERT INTO users (email, name, avatar_url) VALUES ($1, $2, $3) RETURNING {USER_COLS}"
        );
        let st = self.statement("users.insert")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(email)
            .bind(name)
            .bind(avatar_url)
            .fetch_one(self.pool())
            .await?;
        st.done(1);
        Ok(rows::user(&row)?)
    }

    pub async fn create_resource(
        &self,
        name: &str,
        kind: ResourceKind,
        capacity: Option<i32>,
        location: Option<&str>,
    ) -> Result<Resource> {
        let sql = format!(
            "INSERT INTO resources (name, kind, capacity, location) VALUES ($1, $2, $3, $4) RETURNING {RESOURCE_COLS}"
        );
        let st = self.statement("resources.insert")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .bind(kind.as_str())
            .bind(capacity)
            .bind(location)
            .fetch_one(self.pool())
            .await?;
        st.done(1);
        Ok(rows::resource(&row)?)
    }

    async fn calendar_in(&self, conn: &mut PgConnection, id: CalendarId) -> Result<Calendar> {
        let sql = format!("SELECT {CALENDAR_COLS} FROM {CALENDAR_FROM} WHERE c.id = $1");
        let st = self.statement("calendars.by_id")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.get())
            .fetch_one(conn)
            .await?;
        st.done(1);
        Ok(rows::calendar(&row)?)
    }

    /// Creates a calendar owned by `owner` (who becomes its `owner` member).
    pub async fn create_calendar(
        &self,
        owner: UserId,
        name: &CalendarName,
        description: Option<&CalendarDescription>,
        time_zone: &str,
    ) -> Result<Calendar> {
        let mut tx = self.begin().await?;
        let st = self.statement("calendars.insert")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO calendars (owner_id, name, description, time_zone) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(owner.get())
        .bind(name.as_str())
        .bind(description.map(CalendarDescription::as_str))
        .bind(time_zone)
        .fetch_one(&mut *tx)
        .await?;
        st.done(1);
        let st = self.statement("calendar_members.insert_owner")?;
        sqlx::query(
            "INSERT INTO calendar_members (calendar_id, user_id, role) VALUES ($1, $2, 'owner')",
        )
        .bind(id)
        .bind(owner.get())
        .execute(&mut *tx)
        .await?;
        st.done(1);
        // A new calendar may have been cached as missing.
        tx.changes.calendars.push((CalendarId::new(id), 1));
        self.outbox(
            &mut tx,
            "calendar",
            id,
            "calendar.created",
            json!({ "owner_id": owner.get() }),
        )
        .await?;
        let cal = self.calendar_in(&mut tx, CalendarId::new(id)).await?;
        self.commit(tx).await?;
        Ok(cal)
    }

    /// Gives `user` `role` on a calendar (or changes it). The owner's own row cannot be changed here.
    pub async fn share_calendar(
        &self,
        calendar: CalendarId,
        user: UserId,
        role: Role,
    ) -> Result<Calendar> {
        if role == Role::Owner {
            return Err(StorageError::Invalid(
                "a calendar has exactly one owner".into(),
            ));
        }
        let mut tx = self.begin().await?;
        self.touch_calendar(&mut tx, calendar).await?;
        let st = self.statement("calendar_members.upsert")?;
        let changed = sqlx::query(
            "INSERT INTO calendar_members (calendar_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (calendar_id, user_id) DO UPDATE SET role = EXCLUDED.role \
             WHERE calendar_members.role <> 'owner'",
        )
        .bind(calendar.get())
        .bind(user.get())
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        st.done(0);
        if changed == 0 {
            return Err(StorageError::Invalid(
                "the owner's role cannot be changed".into(),
            ));
        }
        self.outbox(
            &mut tx,
            "calendar",
            calendar.get(),
            "calendar.shared",
            json!({ "user_id": user.get(), "role": role.as_str() }),
        )
        .await?;
        let cal = self.calendar_in(&mut tx, calendar).await?;
        self.commit(tx).await?;
        Ok(cal)
    }

    /// Removes `user`'s membership (never the owner's). Returns whether a membership was removed.
    pub async fn unshare_calendar(&self, calendar: CalendarId, user: UserId) -> Result<bool> {
        let mut tx = self.begin().await?;
        self.touch_calendar(&mut tx, calendar).await?;
        let st = self.statement("calendar_members.delete")?;
        let removed = sqlx::query("DELETE FROM calendar_members WHERE calendar_id = $1 AND user_id = $2 AND role <> 'owner'")
            .bind(calendar.get())
            .bind(user.get())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        st.done(0);
        if removed > 0 {
            self.outbox(
                &mut tx,
                "calendar",
                calendar.get(),
                "calendar.unshared",
                json!({ "user_id": user.get() }),
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(removed > 0)
    }
}

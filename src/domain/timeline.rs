//! A ticket's timeline as staff and as the client see it, from its items.

use super::{Error, Item, Kind, OnActivity, Result, State};

/// A ticket's timeline from all its items.
///
/// Staff see every item but the cancelled ones, each at [`Item::timeline_at`]. The
/// client sees SENT items only, with internal fields cleared; a ticket that holds an
/// unsent (or cancelled) NEW_TICKET and nothing sent does not exist for the client.
///
/// # Errors
/// `NotFound` for the client in that last case.
pub fn timeline(mut items: Vec<Item>, for_client: bool) -> Result<Vec<Item>> {
    if for_client {
        let any_sent = items.iter().any(|i| i.state == State::Sent);
        let hidden_ticket = items
            .iter()
            .any(|i| i.kind == Kind::NewTicket && i.state != State::Sent);
        if !any_sent && hidden_ticket {
            return Err(Error::NotFound("ticket not found".into()));
        }
        items.retain(|i| i.state == State::Sent);
        for i in &mut items {
            clear_internal(i);
        }
    } else {
        items.retain(|i| i.state != State::Cancelled);
    }
    items.sort_by_key(|i| (i.timeline_at(), i.id));
    Ok(items)
}

/// Clears what a client must never see: bcc, author, idempotency key, delivery
/// bookkeeping, policy.
pub fn clear_internal(item: &mut Item) {
    if let super::Content::Email(e) = &mut item.content {
        e.bcc.clear();
    }
    item.author_id.clear();
    item.request_id = None;
    item.attempts = 0;
    item.last_error = None;
    item.next_attempt_at = None;
    item.lease_expires_at = None;
    item.on_activity = OnActivity::ConvertToNote;
    item.converted_by = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, ChatContent, Content, Millis, NewItem};

    fn item(state: State, kind: Kind, created_at: Millis, policy: OnActivity) -> Item {
        let new = NewItem {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            kind,
            channel: Channel::Chat,
            author_id: "u".into(),
            content: Content::Chat(ChatContent::default()),
            send_at: 10_000,
            on_activity: policy,
            request_id: None,
            timing: Default::default(),
        };
        Item {
            state,
            ..new.into_pending(7, created_at)
        }
    }

    #[test]
    fn client_timeline_shows_only_sent_items_without_internal_fields() {
        let mut sent = item(State::Sent, Kind::Reply, 100, OnActivity::Keep);
        sent.sent_at = Some(500);
        sent.author_id = "agent".into();
        sent.attempts = 2;
        let pending = Item {
            id: 8,
            ..item(State::Pending, Kind::Reply, 50, OnActivity::Keep)
        };
        let got = timeline(vec![pending, sent], true).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].author_id, "");
        assert_eq!(got[0].attempts, 0);
    }

    #[test]
    fn an_unsent_new_ticket_does_not_exist_for_the_client() {
        let t = item(State::Pending, Kind::NewTicket, 100, OnActivity::Keep);
        assert!(matches!(
            timeline(vec![t.clone()], true),
            Err(Error::NotFound(_))
        ));
        let c = Item {
            state: State::Cancelled,
            ..t.clone()
        };
        assert!(matches!(
            timeline(vec![c.clone()], true),
            Err(Error::NotFound(_))
        ));
        // Staff see the pending one, not the cancelled one.
        assert_eq!(timeline(vec![t], false).unwrap().len(), 1);
        assert!(timeline(vec![c], false).unwrap().is_empty());
        // A ticket with nothing at all is just empty.
        assert!(timeline(vec![], true).unwrap().is_empty());
    }

    #[test]
    fn staff_timeline_orders_by_sent_note_or_send_time() {
        let mut sent = item(State::Sent, Kind::Reply, 10, OnActivity::Keep);
        sent.sent_at = Some(300);
        let mut note = Item {
            id: 8,
            ..item(State::Pending, Kind::Reply, 20, OnActivity::ConvertToNote)
        };
        // Converted to a note by activity: the note is at its creation time.
        note.state = State::ConvertedToNote;
        note.note_at = Some(note.created_at);
        let pending = Item {
            id: 9,
            send_at: 200,
            ..item(State::Pending, Kind::Reply, 30, OnActivity::Keep)
        };
        let got = timeline(vec![sent, pending, note], false).unwrap();
        let ids: Vec<_> = got.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![8, 9, 7]); // note at 20, pending at 200, sent at 300
    }
}

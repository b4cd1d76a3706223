//! ListScheduled and ListDeferredTickets: filters, order, page sizes, and keyset
//! pagination that stays stable while items are added between pages.
mod common;
mod scheduler_helpers;

use std::collections::HashSet;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

fn sends(items: &[pb::ScheduledItem]) -> Vec<i64> {
    items.iter().map(|i| ms(&i.send_at)).collect()
}

/// Walks a listing page by page, fetching pages of `size`.
async fn walk(
    t: &mut TestServer,
    account: &str,
    order: pb::Order,
    size: u32,
) -> Vec<pb::ScheduledItem> {
    let mut req = list_req(account);
    req.order = order as i32;
    req.page_size = size;
    let mut pages = 0;
    let mut out = Vec::new();
    loop {
        let page = list(t, req.clone()).await;
        assert!(page.items.len() <= size as usize);
        pages += 1;
        out.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages < 1000, "too many pages");
        req.page_token = page.next_page_token;
    }
    out
}

fn assert_each_once(got: &[pb::ScheduledItem], want: &[pb::ScheduledItem]) {
    let got_ids = ids(got);
    let set: HashSet<_> = got_ids.iter().cloned().collect();
    assert_eq!(set.len(), got_ids.len(), "an item came twice: {got_ids:?}");
    assert_eq!(set, id_set(want), "not every item came");
}

// ---- ListScheduled -------------------------------------------------------------------

#[tokio::test]
async fn the_default_listing_shows_pending_items_only() {
    let mut t = TestServer::start().await;
    let items = many_replies(&mut t, "acme", "T1", 4, T0 + HOUR, MINUTE).await;
    cancel(&mut t, "acme", &items[1].item_id).await;
    let page = list(&mut t, list_req("acme")).await;
    assert_eq!(
        ids(&page.items),
        vec![
            items[0].item_id.clone(),
            items[2].item_id.clone(),
            items[3].item_id.clone()
        ]
    );
    assert!(page.next_page_token.is_empty());
    let mut explicit = list_req("acme");
    explicit.state = pb::State::Pending as i32;
    assert_eq!(list(&mut t, explicit).await.items, page.items);
    t.stop().await;
}

#[tokio::test]
async fn listing_filters_on_ticket_channel_author_and_kind() {
    let mut t = TestServer::start().await;
    let mut by_bob = chat_reply("acme", "T2", T0 + 3 * HOUR);
    by_bob.author_id = "bob".into();
    let items = batch(
        &mut t,
        vec![
            reply_entry(email_reply("acme", "T1", T0 + HOUR)), // 0
            reply_entry(chat_reply("acme", "T1", T0 + 2 * HOUR)), // 1
            reply_entry(by_bob),                               // 2
            entry(
                email_reply("acme", "NEW", T0 + 4 * HOUR),
                pb::Kind::NewTicket,
            ), // 3
        ],
    )
    .await;
    let id = |i: usize| items[i].item_id.clone();

    let mut q = list_req("acme");
    q.ticket_id = "T1".into();
    assert_eq!(ids(&list_all(&mut t, q).await), vec![id(0), id(1)]);

    let mut q = list_req("acme");
    q.channel = pb::Channel::Chat as i32;
    assert_eq!(ids(&list_all(&mut t, q).await), vec![id(1), id(2)]);

    let mut q = list_req("acme");
    q.author_id = "bob".into();
    assert_eq!(ids(&list_all(&mut t, q).await), vec![id(2)]);

    let mut q = list_req("acme");
    q.kind = pb::Kind::NewTicket as i32;
    assert_eq!(ids(&list_all(&mut t, q).await), vec![id(3)]);

    let mut q = list_req("acme");
    q.kind = pb::Kind::Reply as i32;
    q.channel = pb::Channel::Email as i32;
    assert_eq!(ids(&list_all(&mut t, q).await), vec![id(0)]);

    let mut q = list_req("acme");
    q.ticket_id = "T1".into();
    q.author_id = "bob".into();
    assert!(list_all(&mut t, q).await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn the_send_at_range_includes_from_and_excludes_to() {
    let mut t = TestServer::start().await;
    let items = many_replies(&mut t, "acme", "T1", 5, T0 + 1000, 1000).await;
    let mut q = list_req("acme");
    q.send_at_from = Some(ts(T0 + 2000));
    q.send_at_to = Some(ts(T0 + 4000));
    let got = list_all(&mut t, q).await;
    assert_eq!(sends(&got), vec![T0 + 2000, T0 + 3000]);
    assert_eq!(ids(&got), ids(&items[1..3]));

    let mut q = list_req("acme");
    q.send_at_from = Some(ts(T0 + 4000));
    assert_eq!(
        sends(&list_all(&mut t, q).await),
        vec![T0 + 4000, T0 + 5000]
    );
    let mut q = list_req("acme");
    q.send_at_to = Some(ts(T0 + 2000));
    assert_eq!(sends(&list_all(&mut t, q).await), vec![T0 + 1000]);
    t.stop().await;
}

#[tokio::test]
async fn listing_is_ascending_by_send_at_by_default_and_descending_on_request() {
    let mut t = TestServer::start().await;
    let offsets = [5, 1, 4, 2, 3];
    let entries = offsets
        .iter()
        .map(|h| reply_entry(email_reply("acme", "T1", T0 + h * HOUR)))
        .collect();
    batch(&mut t, entries).await;
    let asc = list_all(&mut t, list_req("acme")).await;
    assert_eq!(
        sends(&asc),
        (1..=5).map(|h| T0 + h * HOUR).collect::<Vec<_>>()
    );
    let mut q = list_req("acme");
    q.order = pb::Order::SendAtDesc as i32;
    let desc = list_all(&mut t, q).await;
    assert_eq!(
        sends(&desc),
        (1..=5).rev().map(|h| T0 + h * HOUR).collect::<Vec<_>>()
    );
    t.stop().await;
}

#[tokio::test]
async fn page_size_zero_means_100() {
    let mut t = TestServer::start().await;
    many_replies(&mut t, "acme", "T1", 150, T0 + HOUR, 1000).await;
    let page = list(&mut t, list_req("acme")).await;
    assert_eq!(page.items.len(), 100);
    assert!(!page.next_page_token.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn page_size_above_1000_is_lowered_to_1000() {
    let mut t = TestServer::start().await;
    let items = many_replies(&mut t, "acme", "T1", 1005, T0 + HOUR, 1000).await;
    let mut q = list_req("acme");
    q.page_size = 5000;
    let first = list(&mut t, q.clone()).await;
    assert_eq!(first.items.len(), 1000);
    assert_eq!(ids(&first.items), ids(&items[..1000]));
    assert!(!first.next_page_token.is_empty());
    q.page_token = first.next_page_token;
    let second = list(&mut t, q).await;
    assert_eq!(ids(&second.items), ids(&items[1000..]));
    assert!(second.next_page_token.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn pages_walk_every_item_exactly_once_in_order_in_both_directions() {
    let mut t = TestServer::start().await;
    // Several items share a send_at: the walk must neither skip nor repeat them.
    let entries: Vec<_> = (0..23)
        .map(|i| reply_entry(chat_reply("acme", "T1", T0 + HOUR + (i % 5) * 1000)))
        .collect();
    let items = batch(&mut t, entries).await;
    for size in [1, 4, 7, 23, 24] {
        let asc = walk(&mut t, "acme", pb::Order::SendAtAsc, size).await;
        assert_each_once(&asc, &items);
        assert!(sends(&asc).windows(2).all(|w| w[0] <= w[1]), "size {size}");
        let desc = walk(&mut t, "acme", pb::Order::SendAtDesc, size).await;
        assert_each_once(&desc, &items);
        assert!(sends(&desc).windows(2).all(|w| w[0] >= w[1]), "size {size}");
    }
    t.stop().await;
}

#[tokio::test]
async fn page_tokens_stay_valid_while_items_are_inserted_between_pages() {
    let mut t = TestServer::start().await;
    // Originals at +10s, +20s, ... +100s.
    let originals = many_replies(&mut t, "acme", "T1", 10, T0 + 10_000, 10_000).await;
    let mut q = list_req("acme");
    q.page_size = 3;
    let first = list(&mut t, q.clone()).await;
    assert_eq!(ids(&first.items), ids(&originals[..3]));
    // New items before the cursor, tied with the cursor, and after it.
    let before = schedule(&mut t, email_reply("acme", "T2", T0 + 5_000)).await;
    let tied = schedule(&mut t, email_reply("acme", "T2", T0 + 30_000)).await;
    let after = schedule(&mut t, email_reply("acme", "T2", T0 + 55_000)).await;
    let mut rest = Vec::new();
    q.page_token = first.next_page_token;
    loop {
        let page = list(&mut t, q.clone()).await;
        rest.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        q.page_token = page.next_page_token;
    }
    let rest_ids = ids(&rest);
    assert!(
        !rest_ids.contains(&before.item_id),
        "an item before the cursor"
    );
    for o in &originals[3..] {
        assert_eq!(
            rest_ids.iter().filter(|i| *i == &o.item_id).count(),
            1,
            "{} once",
            o.item_id
        );
    }
    for o in &originals[..3] {
        assert!(!rest_ids.contains(&o.item_id), "a seen item came again");
    }
    assert!(
        rest_ids.contains(&after.item_id),
        "an item after the cursor"
    );
    // `tied` has the cursor's send_at and a larger id: it sorts after the cursor.
    assert!(rest_ids.contains(&tied.item_id));
    assert!(sends(&rest).windows(2).all(|w| w[0] <= w[1]));
    t.stop().await;
}

#[tokio::test]
async fn a_garbage_page_token_is_invalid_argument_naming_page_token() {
    let mut t = TestServer::start().await;
    many_replies(&mut t, "acme", "T1", 3, T0 + HOUR, 1000).await;
    for token in ["garbage", "v1.a.x.y", "v1.a.1.zz", "v9.a.1.31", "...."] {
        let mut q = list_req("acme");
        q.page_token = token.into();
        let r = t.client.list_scheduled(q).await;
        assert_status(r, Code::InvalidArgument, "page_token: ");
    }
    t.stop().await;
}

#[tokio::test]
async fn a_page_token_used_with_the_other_order_is_invalid_argument() {
    let mut t = TestServer::start().await;
    many_replies(&mut t, "acme", "T1", 5, T0 + HOUR, 1000).await;
    let mut q = list_req("acme");
    q.page_size = 2;
    let asc = list(&mut t, q.clone()).await;
    q.order = pb::Order::SendAtDesc as i32;
    q.page_token = asc.next_page_token;
    let r = t.client.list_scheduled(q.clone()).await;
    assert_status(r, Code::InvalidArgument, "page_token: ");
    q.page_token = String::new();
    let desc = list(&mut t, q.clone()).await;
    q.order = pb::Order::SendAtAsc as i32;
    q.page_token = desc.next_page_token;
    let r = t.client.list_scheduled(q).await;
    assert_status(r, Code::InvalidArgument, "page_token: ");
    t.stop().await;
}

#[tokio::test]
async fn listing_without_an_account_is_invalid_argument() {
    let mut t = TestServer::start().await;
    let r = t.client.list_scheduled(list_req("")).await;
    assert_status(r, Code::InvalidArgument, "account_id: ");
    let r = t
        .client
        .list_deferred_tickets(pb::ListDeferredTicketsRequest::default())
        .await;
    assert_status(r, Code::InvalidArgument, "account_id: ");
    t.stop().await;
}

// ---- ListDeferredTickets -------------------------------------------------------------

#[tokio::test]
async fn deferred_tickets_show_the_earliest_send_at_and_the_pending_count() {
    let mut t = TestServer::start().await;
    let items = batch(
        &mut t,
        vec![
            reply_entry(email_reply("acme", "T1", T0 + 3 * HOUR)),
            reply_entry(chat_reply("acme", "T1", T0 + HOUR)),
            reply_entry(email_reply("acme", "T1", T0 + 2 * HOUR)),
            reply_entry(email_reply("acme", "T2", T0 + 30 * MINUTE)),
            entry(
                chat_reply("acme", "NEW", T0 + 5 * HOUR),
                pb::Kind::NewTicket,
            ),
            reply_entry(email_reply("acme", "T3", T0 + 10 * MINUTE)),
        ],
    )
    .await;
    cancel(&mut t, "acme", &items[5].item_id).await;
    let asc = all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0).await;
    assert_eq!(
        asc,
        vec![
            ("T2".to_string(), T0 + 30 * MINUTE, 1),
            ("T1".to_string(), T0 + HOUR, 3),
            ("NEW".to_string(), T0 + 5 * HOUR, 1),
        ]
    );
    let desc = all_tickets(&mut t, "acme", pb::Order::SendAtDesc, 0).await;
    assert_eq!(desc, asc.into_iter().rev().collect::<Vec<_>>());
    t.stop().await;
}

#[tokio::test]
async fn deferred_tickets_follow_cancellations_and_conversions() {
    let mut t = TestServer::start().await;
    let items = batch(
        &mut t,
        vec![
            reply_entry(email_reply("acme", "T1", T0 + HOUR)),
            reply_entry(email_reply("acme", "T1", T0 + 2 * HOUR)),
            reply_entry(email_reply("acme", "T2", T0 + 3 * HOUR)),
        ],
    )
    .await;
    cancel(&mut t, "acme", &items[0].item_id).await;
    assert_eq!(
        all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0).await,
        vec![
            ("T1".to_string(), T0 + 2 * HOUR, 1),
            ("T2".to_string(), T0 + 3 * HOUR, 1),
        ]
    );
    cancel(&mut t, "acme", &items[1].item_id).await;
    t.advance(std::time::Duration::from_secs(1));
    record_activity(
        &mut t,
        activity_req("acme", "T2", pb::AuthorKind::Client, "m", T0 + 500),
    )
    .await;
    assert!(all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0)
        .await
        .is_empty());
    t.stop().await;
}

#[tokio::test]
async fn deferred_tickets_page_through_every_ticket_exactly_once_in_order() {
    let mut t = TestServer::start().await;
    // 11 tickets; T0..T10, several sharing a next_send_at, two items each.
    let mut entries = Vec::new();
    for k in 0..11i64 {
        let ticket = format!("T{k}");
        entries.push(reply_entry(email_reply(
            "acme",
            &ticket,
            T0 + HOUR + (k % 4) * MINUTE,
        )));
        entries.push(reply_entry(email_reply("acme", &ticket, T0 + 9 * HOUR)));
    }
    batch(&mut t, entries).await;
    let reference = all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 1000).await;
    assert_eq!(reference.len(), 11);
    assert!(reference.iter().all(|(_, _, n)| *n == 2));
    assert!(reference.windows(2).all(|w| w[0].1 <= w[1].1));
    for size in [1, 3, 4, 10, 11, 12] {
        let asc = all_tickets(&mut t, "acme", pb::Order::SendAtAsc, size).await;
        assert_eq!(asc, reference, "page size {size}");
        let desc = all_tickets(&mut t, "acme", pb::Order::SendAtDesc, size).await;
        let names: HashSet<_> = desc.iter().map(|d| d.0.clone()).collect();
        assert_eq!(names.len(), 11, "page size {size}: {desc:?}");
        assert!(desc.windows(2).all(|w| w[0].1 >= w[1].1), "{desc:?}");
    }
    let page = tickets(&mut t, "acme", pb::Order::SendAtAsc, 3, "").await;
    assert_eq!(page.tickets.len(), 3);
    assert!(!page.next_page_token.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn deferred_tickets_refuse_a_garbage_or_wrong_order_page_token() {
    let mut t = TestServer::start().await;
    many_replies(&mut t, "acme", "T1", 1, T0 + HOUR, 0).await;
    many_replies(&mut t, "acme", "T2", 1, T0 + 2 * HOUR, 0).await;
    let r = t
        .client
        .list_deferred_tickets(pb::ListDeferredTicketsRequest {
            account_id: "acme".into(),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_token: ");
    let first = tickets(&mut t, "acme", pb::Order::SendAtAsc, 1, "").await;
    let r = t
        .client
        .list_deferred_tickets(pb::ListDeferredTicketsRequest {
            account_id: "acme".into(),
            order: pb::Order::SendAtDesc as i32,
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_token: ");
    t.stop().await;
}

#[tokio::test]
async fn a_listing_that_exactly_fills_its_page_has_no_next_page_token() {
    let mut t = TestServer::start().await;
    many_replies(&mut t, "acme", "T1", 100, T0 + HOUR, 1000).await;
    let page = list(&mut t, list_req("acme")).await;
    assert_eq!(page.items.len(), 100);
    assert!(
        page.next_page_token.is_empty(),
        "{:?}",
        page.next_page_token
    );
    let mut q = list_req("acme");
    q.page_size = 50;
    let first = list(&mut t, q.clone()).await;
    q.page_token = first.next_page_token;
    let second = list(&mut t, q).await;
    assert_eq!(second.items.len(), 50);
    assert!(second.next_page_token.is_empty());
    t.stop().await;
}

/// Page tokens whose key part holds multi-byte characters: the hex pairs of the key
/// do not fall on character boundaries.
const GARBLED_TOKENS: [&str; 4] = ["v1.a.1.€a", "v1.a.1.aéb", "v1.a.1.日本", "v1.a.1.0😀0"];

#[tokio::test]
async fn a_page_token_with_multi_byte_characters_is_invalid_argument_naming_page_token() {
    let mut t = TestServer::start().await;
    many_replies(&mut t, "acme", "T1", 3, T0 + HOUR, 1000).await;
    for token in GARBLED_TOKENS {
        let mut q = list_req("acme");
        q.page_token = token.into();
        let r = t.client.list_scheduled(q).await;
        assert_status(r, Code::InvalidArgument, "page_token: ");
        let r = t
            .client
            .list_deferred_tickets(pb::ListDeferredTicketsRequest {
                account_id: "acme".into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, "page_token: ");
    }
    // The server still answers after them.
    let page = list(&mut t, list_req("acme")).await;
    assert_eq!(page.items.len(), 3);
    t.stop().await;
}

#[tokio::test]
async fn a_page_of_large_items_stops_before_the_response_limit_with_a_next_page_token() {
    const KIB: usize = 1024;
    let mut t = TestServer::start_with(|c| c.limits.max_message_bytes = 1024 * KIB).await;
    let mut want = Vec::new();
    for i in 0..12 {
        let mut req = chat_reply("acme", "T1", T0 + HOUR + i * MINUTE);
        chat_of(&mut req).text = char::from(b'a' + i as u8).to_string().repeat(200 * KIB);
        want.push(schedule(&mut t, req).await);
    }
    let mut req = list_req("acme");
    req.page_size = 100;
    let first = list(&mut t, req.clone()).await;
    assert!(
        !first.items.is_empty() && first.items.len() < 12,
        "a page of {} items",
        first.items.len()
    );
    assert!(
        !first.next_page_token.is_empty(),
        "the page says more follow"
    );
    let all = list_all(&mut t, req).await;
    assert_eq!(ids(&all), ids(&want), "every item once, in send order");
    t.stop().await;
}

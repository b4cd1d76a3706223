//! The fault and abuse suite: a hostile connector, a failing disk, a stepping clock, a
//! shutdown with answers in flight. Each test ends by checking the delivery invariants
//! (`common::assert_invariants`: everything answered OK is there, nothing live is
//! stranded, nothing cancelled or converted was sent, the file is intact).
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;

fn answer_ack(job_id: &str) -> pb::ConnectorMessage {
    pb::ConnectorMessage {
        msg: Some(pb::connector_message::Msg::Ack(pb::Ack {
            job_id: job_id.into(),
            provider_message_id: "forged".into(),
        })),
    }
}

fn answer_nack(job_id: &str, permanent: bool) -> pb::ConnectorMessage {
    pb::ConnectorMessage {
        msg: Some(pb::connector_message::Msg::Nack(pb::Nack {
            job_id: job_id.into(),
            error: "forged".into(),
            permanent,
        })),
    }
}

/// A job id for an item that was never handed out, spelt as the first round spelt them.
fn spelt_job_id(item_id: &str, attempt: u32) -> String {
    format!("{item_id}#{attempt}")
}

/// Sends `fence`'s ack on `c` after whatever was sent before, and waits until it is
/// recorded: the stream is ordered, so everything sent before it was read first.
async fn fence(t: &TestServer, c: &TestConnector, job: &pb::DeliveryJob) {
    c.ack(job, "fence").await;
    wait_state(&t.client, "acme", &job_item(job), pb::State::Sent).await;
    t.settle().await;
}

#[tokio::test]
async fn a_forged_ack_for_a_job_never_handed_out_changes_nothing() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let later = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let older = t.schedule(email_reply("acme", "T1", T0 + 7_200_000)).await;
    let due = t.schedule(email_reply("acme", "T2", T0 + 1_000)).await;
    // Every id the connector could spell: the item, attempts 0..3.
    for attempt in 0..3 {
        c.tx.send(answer_ack(&spelt_job_id(&later.item_id, attempt)))
            .await
            .unwrap();
        c.tx.send(answer_nack(&spelt_job_id(&older.item_id, attempt), true))
            .await
            .unwrap();
    }
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), due.item_id);
    fence(&t, &c, &job).await;
    let later = t.get_acme(&later.item_id).await;
    assert_eq!(later.state, pb::State::Pending as i32, "{later:?}");
    let older = t.get_acme(&older.item_id).await;
    assert_eq!(older.state, pb::State::Pending as i32, "{older:?}");
    // Both still go out when due.
    t.advance(Duration::from_secs(7_200));
    let mut got = vec![job_item(&c.next_job().await), job_item(&c.next_job().await)];
    got.sort();
    let mut want = vec![later.item_id.clone(), older.item_id.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_invariants(
        &t,
        "acme",
        &[
            later.item_id.clone(),
            older.item_id.clone(),
            due.item_id.clone(),
        ],
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn an_answer_counts_only_on_the_stream_that_holds_the_job() {
    let mut t = TestServer::start().await;
    let mut holder = TestConnector::connect(&t.url(), &[pb::Channel::Email], 1).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    let job = holder.next_job().await;
    // Another connector (same token, same channel) answers for it, with the real id.
    let mut thief = TestConnector::connect(&t.url(), &[pb::Channel::Email], 1).await;
    thief.tx.send(answer_nack(&job.job_id, true)).await.unwrap();
    thief.tx.send(answer_ack(&job.job_id)).await.unwrap();
    // Fence on the thief's stream: a job of its own, acked.
    let own = t.schedule(email_reply("acme", "T2", T0 + 1_000)).await;
    let own_job = thief.next_job().await;
    assert_eq!(job_item(&own_job), own.item_id);
    fence(&t, &thief, &own_job).await;
    let now = t.get_acme(&item.item_id).await;
    assert_eq!(now.state, pb::State::Dispatching as i32, "{now:?}");
    // The holder's own answer counts.
    holder.ack(&job, "<real@example.com>").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(sent.provider_message_id, "<real@example.com>");
    assert_invariants(&t, "acme", &[item.item_id.clone(), own.item_id.clone()]).await;
    t.stop().await;
}

#[tokio::test]
async fn a_flood_of_forged_answers_is_ignored_and_the_stream_keeps_working() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 2).await;
    let item = t.schedule(chat_reply("acme", "T1", T0 + 1_000)).await;
    let flood = tokio::spawn({
        let tx = c.tx.clone();
        async move {
            for i in 0..20_000u32 {
                let id = format!("itm_{}#{}", i % 50, i % 7);
                if tx.send(answer_ack(&id)).await.is_err() {
                    return;
                }
            }
        }
    });
    flood.await.unwrap();
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    fence(&t, &c, &job).await;
    assert_invariants(&t, "acme", std::slice::from_ref(&item.item_id)).await;
    t.stop().await;
}

/// An email whose body nearly fills the body limit: larger than an HTTP/2 stream
/// window, so a connector that does not read leaves it stuck in the send buffer.
fn big_email(ticket: &str, send_at: i64) -> pb::ScheduleRequest {
    let mut r = email_reply("acme", ticket, send_at);
    if let Some(pb::schedule_request::Content::Email(e)) = r.content.as_mut() {
        e.text_body = "x".repeat(250_000);
    }
    r
}

#[tokio::test]
async fn a_connector_that_never_reads_does_not_burn_the_attempts_of_an_item() {
    let mut t = TestServer::start().await;
    // Connects, sends Hello, never reads a job and never answers.
    let deaf = TestConnector::connect(&t.url(), &[pb::Channel::Email], 1).await;
    let first = t.schedule(big_email("T1", T0 + 1_000)).await;
    let second = t.schedule(big_email("T2", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    t.settle().await;
    // Leases expire unanswered, twice over.
    for _ in 0..3 {
        t.advance(Duration::from_secs(31));
        t.settle().await;
    }
    for id in [&first.item_id, &second.item_id] {
        let it = t.get_acme(id).await;
        assert_ne!(it.state, pb::State::Failed as i32, "{it:?}");
        assert!(
            it.attempts <= 2,
            "attempts burnt on a deaf connector: {it:?}"
        );
    }
    // A healthy connector gets both.
    let mut healthy = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let job = healthy.next_job().await;
        got.push(job_item(&job));
        healthy.ack(&job, "ok").await;
    }
    got.sort();
    let mut want = vec![first.item_id.clone(), second.item_id.clone()];
    want.sort();
    assert_eq!(got, want);
    drop(deaf);
    assert_invariants(&t, "acme", &[first.item_id.clone(), second.item_id.clone()]).await;
    t.stop().await;
}

/// A server with metrics on 127.0.0.1 (each server has its own counters).
async fn start_with_metrics() -> TestServer {
    TestServer::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

/// As [`start_with_metrics`], on SQLite (for tests that damage its file).
async fn start_sqlite_with_metrics() -> TestServer {
    TestServer::start_sqlite_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

/// The values of `series` in this server's `/metrics`, in order.
async fn counters(t: &TestServer, series: &[&str]) -> Vec<f64> {
    let body = scrape_metrics(t.running().metrics_addr().expect("metrics on")).await;
    series.iter().map(|s| metric_value(&body, s)).collect()
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn an_item_that_cannot_be_read_fails_alone_and_the_rest_flow_on() {
    let mut t = start_sqlite_with_metrics().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let held = t.schedule(email_reply("acme", "T0", T0 + 1_000)).await;
    let bad_content = t.schedule(email_reply("acme", "T1", T0 + 5_000)).await;
    let bad_channel = t.schedule(email_reply("acme", "T2", T0 + 5_000)).await;
    let good = t.schedule(email_reply("acme", "T3", T0 + 5_000)).await;
    t.advance(Duration::from_secs(1));
    let held_job = c.next_job().await;
    assert_eq!(job_item(&held_job), held.item_id);
    {
        let db = raw(&t);
        db.execute(
            "UPDATE items SET content = x'ff00ff' WHERE id = ?1",
            [numeric_id(&bad_content.item_id)],
        )
        .unwrap();
        db.execute(
            "UPDATE items SET channel = 99 WHERE id = ?1",
            [numeric_id(&bad_channel.item_id)],
        )
        .unwrap();
    }
    t.advance(Duration::from_secs(4));
    // The answer for the held job arrives while the poisoned items are due.
    c.ack(&held_job, "<held@example.com>").await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), good.item_id);
    c.ack(&job, "<good@example.com>").await;
    wait_state(&t.client, "acme", &good.item_id, pb::State::Sent).await;
    let held_now = wait_state(&t.client, "acme", &held.item_id, pb::State::Sent).await;
    assert_eq!(
        held_now.attempts, 1,
        "the held job's ack was lost: {held_now:?}"
    );
    t.settle().await;
    let db = raw(&t);
    for bad in [&bad_content, &bad_channel] {
        let (state, err): (i64, Option<String>) = db
            .query_row(
                "SELECT state, last_error FROM items WHERE id = ?1",
                [numeric_id(&bad.item_id)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(state, pb::State::Failed as i64, "{bad:?}");
        let err = err.unwrap_or_default();
        assert!(err.contains("cannot be read"), "last_error: {err:?}");
    }
    // Each unreadable item counted once.
    assert_eq!(
        counters(&t, &["sendlater_unreadable_items_total"]).await,
        vec![2.0]
    );
    // The corrupt rows are there (read above); GetItem cannot decode them.
    assert_invariants(&t, "acme", &[held.item_id.clone(), good.item_id.clone()]).await;
    t.stop().await;
}

#[tokio::test]
async fn answers_in_flight_at_shutdown_are_recorded() {
    let mut t = TestServer::start_with(|c| c.dispatch.drain_grace_ms = 5_000).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 1).await;
    let item = t.schedule(chat_reply("acme", "T1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    // Begin the graceful stop (one poll runs its synchronous start: stop accepting,
    // end the streams), then the connector answers.
    let server = t.server.take().expect("running");
    let stopping = server.shutdown();
    tokio::pin!(stopping);
    tokio::select! {
        biased;
        r = &mut stopping => panic!("shutdown finished at once: {r:?}"),
        _ = std::future::ready(()) => {}
    }
    c.ack(&job, "<sent@example.com>").await;
    // The connector stays until the server ends its stream, as a real one does.
    stopping.await.expect("clean shutdown");
    assert!(
        c.jobs.message().await.ok().flatten().is_none(),
        "no job after the stop"
    );
    t.restart().await;
    let now = t.get_acme(&item.item_id).await;
    assert_eq!(now.state, pb::State::Sent as i32, "{now:?}");
    assert_eq!(now.provider_message_id, "<sent@example.com>");
    assert_invariants(&t, "acme", std::slice::from_ref(&item.item_id)).await;
    t.stop().await;
}

#[tokio::test]
async fn resuming_events_from_a_pruned_sequence_is_out_of_range() {
    let mut t = TestServer::start_with(|c| c.event_retention_ms = 60_000).await;
    for i in 0..3 {
        t.schedule(email_reply("acme", &format!("T{i}"), T0 + 3_600_000))
            .await;
    }
    // The sequences as the store numbers them (1, 2, 3 on SQLite; per partition and
    // epoch on PostgreSQL).
    let mut client = t.client.clone();
    let mut first = Vec::new();
    let mut s = client
        .watch_events(pb::WatchEventsRequest {
            account_id: "acme".into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        first.push(s.message().await.unwrap().unwrap().sequence);
    }
    drop(s);
    t.advance(Duration::from_secs(120));
    t.schedule(email_reply("acme", "T9", T0 + 3_600_000)).await;
    // The background pruner may have run already; either way the first three are gone.
    t.running().engine().prune_events(60_000).await.unwrap();
    // Resuming from just before the oldest retained one is fine.
    let mut s = client
        .watch_events(pb::WatchEventsRequest {
            account_id: "acme".into(),
            after_sequence: first[2],
        })
        .await
        .unwrap()
        .into_inner();
    let fourth = s.message().await.unwrap().unwrap().sequence;
    assert!(fourth > first[2]);
    drop(s);
    let r = client
        .watch_events(pb::WatchEventsRequest {
            account_id: "acme".into(),
            after_sequence: first[0],
        })
        .await;
    let status = match r {
        Err(s) => s,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("resuming after a pruned sequence must fail"),
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("oldest retained sequence is {fourth}")),
        "{}",
        status.message()
    );
    if !pg::store_is_postgres() {
        assert_eq!((first.as_slice(), fourth), (&[1, 2, 3][..], 4));
    }
    assert_invariants(&t, "acme", &[]).await;
    t.stop().await;
}

#[tokio::test]
async fn a_database_reached_through_a_symlink_is_synced_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link_dir = dir.path().join("link");
    std::fs::create_dir(&link_dir).unwrap();
    let link = link_dir.join("sendlater.db");
    std::os::unix::fs::symlink(real.join("data.db"), &link).unwrap();
    let mut t = TestServer::start_with(|c| c.db_path = link.clone()).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 60_000)).await;
    // SQLite writes the WAL beside the real file, not beside the link: that is the file
    // the writer must fsync. Its sync stage opens the WAL by the path it was given and
    // aborts the process when it cannot (no OK without an fsync), so the OK above means
    // it fsynced this file; a WAL path taken from the link would have aborted the test.
    assert!(
        real.join("data.db-wal").is_file(),
        "the WAL is beside the real file"
    );
    let beside_link: Vec<_> = std::fs::read_dir(&link_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside_link, vec![std::ffi::OsString::from("sendlater.db")]);
    t.restart().await;
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Pending as i32
    );
    assert_invariants(&t, "acme", std::slice::from_ref(&item.item_id)).await;
    t.stop().await;
    // Kept: the link is still a link to the real file, which holds the item.
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::symlink_metadata(real.join("data.db"))
        .unwrap()
        .file_type()
        .is_file());
    let db = rusqlite::Connection::open(real.join("data.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM items WHERE id = ?1",
            [numeric_id(&item.item_id)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the real file holds the item");
}

#[tokio::test]
async fn a_panic_on_the_writer_thread_takes_the_service_out_of_rotation() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut t = TestServer::start().await;
    let mut health = HealthClient::new(channel(&t.url()).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "sendlater.v1.Scheduler".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let r = t
        .running()
        .engine()
        .store()
        .write(|_tx| -> sendlater::domain::Result<()> { panic!("injected writer bug") })
        .await;
    assert!(r.is_err());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("health changes within 10 s");
    // Health says NOT_SERVING before the server stops accepting (the stream stays open
    // through the graceful stop), so the watcher sees it.
    let m = next
        .expect("the health stream")
        .expect("a NOT_SERVING update before the stream ends");
    assert_eq!(m.status, ServingStatus::NotServing as i32);
    let failed = tokio::time::timeout(Duration::from_secs(10), t.running().failed())
        .await
        .expect("the server reports its failure");
    assert!(failed.contains("writer"), "{failed}");
    t.server.take();
}

/// `settle` is what every "nothing happened" check stands on: on a server whose writer
/// died it must fail, not return as if the server were idle.
#[tokio::test]
#[should_panic(expected = "the server cannot settle")]
async fn settling_a_server_whose_writer_died_fails_loudly() {
    let t = TestServer::start().await;
    let r = t
        .running()
        .engine()
        .store()
        .write(|_tx| -> sendlater::domain::Result<()> { panic!("injected writer bug") })
        .await;
    assert!(r.is_err());
    t.settle().await;
}

#[tokio::test]
async fn reporting_a_message_that_is_ours_and_still_dispatching_converts_nothing() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 1).await;
    let ours = t.schedule(chat_reply("acme", "T1", T0 + 1_000)).await;
    let later = t.schedule(chat_reply("acme", "T1", T0 + 3_600_000)).await;
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), ours.item_id);
    // The chat webhook reports our own message (by its Idempotency-Key, the item id)
    // before the connector's Ack is recorded.
    t.advance(Duration::from_secs(5));
    let r = t
        .client
        .clone()
        .record_ticket_activity(pb::RecordTicketActivityRequest {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            author_kind: pb::AuthorKind::Staff as i32,
            message_id: ours.item_id.clone(),
            occurred_at: Some(ts(T0 + 6_000)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.affected.is_empty(), "{r:?}");
    assert_eq!(
        t.get_acme(&later.item_id).await.state,
        pb::State::Pending as i32
    );
    assert_invariants(&t, "acme", &[ours.item_id.clone(), later.item_id.clone()]).await;
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_in_the_middle_of_a_group_fails_it_cleanly_and_loses_nothing() {
    let quota = 400u64;
    let mut t = TestServer::start_sqlite_with(|c| c.limits.max_pending_per_account = quota).await;
    let engine = t.running().engine().clone();
    // The disk fills up: a few pages left for the writer's connection.
    engine
        .store()
        .write(|tx| {
            let pages: i64 = tx
                .raw_connection()
                .query_row("PRAGMA page_count", [], |r| r.get(0))?;
            tx.raw_connection().query_row(
                &format!("PRAGMA max_page_count = {}", pages + 40),
                [],
                |_| Ok(()),
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = t.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = email_reply("acme", &format!("T{i}"), T0 + 3_600_000 + i);
            if let Some(pb::schedule_request::Content::Email(e)) = r.content.as_mut() {
                e.text_body = format!("{i} {}", "y".repeat(6_000));
            }
            client.clone().schedule_message(r).await
        }));
    }
    let mut ok = std::collections::BTreeSet::new();
    let mut ok_ids = Vec::new();
    let mut failed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(item) => {
                let id = item.into_inner().item_id;
                ok.insert(numeric_id(&id));
                ok_ids.push(id);
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Internal, "{s:?}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the disk never filled up");
    assert!(!ok.is_empty(), "nothing fit before the disk filled up");
    // Space again.
    engine
        .store()
        .write(|tx| {
            tx.raw_connection()
                .query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))?;
            Ok(())
        })
        .await
        .unwrap();
    t.settle().await;
    // Exactly the answered items are stored, each with its timer.
    let stored: std::collections::BTreeSet<i64> = {
        let db = raw(&t);
        let mut st = db.prepare("SELECT id FROM items").unwrap();
        let ids = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        ids
    };
    assert_eq!(stored, ok, "stored items differ from the ones answered OK");
    assert_eq!(
        engine.pending_timers(),
        ok.len(),
        "a stored item has no timer"
    );
    // The quota counts exactly the stored items.
    let mut more = 0u64;
    loop {
        match t
            .client
            .clone()
            .schedule_message(email_reply("acme", "Q", T0 + 3_600_000))
            .await
        {
            Ok(_) => more += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                break;
            }
        }
        assert!(more <= quota, "quota never reached");
    }
    assert_eq!(more + ok.len() as u64, quota, "the quota counter drifted");
    assert_invariants(&t, "acme", &ok_ids).await;
    t.stop().await;
}

#[tokio::test]
async fn a_clock_step_back_after_an_item_fell_due_strands_nothing() {
    let mut t = TestServer::start().await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 10_000)).await;
    // The item falls due while no connector is there: it waits in line.
    t.clock.set(T0 + 10_000);
    let engine = t.running().engine().clone();
    t.eventually("the wheel fires", || engine.pending_timers() == 0)
        .await;
    // NTP steps the clock back 5 s; then a connector arrives.
    t.clock.set(T0 + 5_000);
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    t.settle().await;
    t.clock.set(T0 + 20_000);
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    // The lease: its timer fires at expiry, then the clock steps back before dispatch
    // looks at it.
    t.clock.set(ms(&job.lease_expires_at));
    t.eventually("the lease timer fires", || engine.pending_timers() == 0)
        .await;
    t.clock.set(T0 + 21_000);
    t.settle().await;
    // The holder never answers (and stays connected, so only the lease can free the
    // item): once the clock is past the lease again, another connector gets it.
    let mut other = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    t.clock.set(ms(&job.lease_expires_at) + 1_000);
    let again = other.next_job().await;
    assert_eq!(job_item(&again), item.item_id);
    assert_eq!(again.attempt, 2);
    other.ack(&again, "ok").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    drop(c);
    assert_invariants(&t, "acme", std::slice::from_ref(&item.item_id)).await;
    t.stop().await;
}

/// README, "What the server trusts of a connector": a connector whose lease expires
/// unanswered gets no more jobs, and its stream ends with UNAVAILABLE once it holds no
/// unexpired job. Counted in `sendlater_stalled_connectors_total` and the lease in
/// `sendlater_abandoned_leases_total`.
#[tokio::test]
async fn a_connector_whose_lease_expires_unanswered_gets_no_more_jobs_and_ends_unavailable() {
    let mut t = start_with_metrics().await;
    let mut stalled = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    let job = stalled.next_job().await;
    assert_eq!((job_item(&job), job.attempt), (item.item_id.clone(), 1));
    // The lease expires unanswered: the item is due again at once, and the stalled
    // connector (credit 10, nothing else to send to) must not get it.
    t.clock.set(ms(&job.lease_expires_at) + 1);
    t.settle().await;
    let end = tokio::time::timeout(Duration::from_secs(10), stalled.jobs.message())
        .await
        .expect("the stream ends within 10 s");
    match end {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Ok(Some(j)) => panic!("a stalled connector got a job: {j:?}"),
        Ok(None) => panic!("the stream ended without UNAVAILABLE"),
    }
    // A healthy connector gets the item's next attempt.
    let mut healthy = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let again = healthy.next_job().await;
    assert_eq!((job_item(&again), again.attempt), (item.item_id.clone(), 2));
    healthy.ack(&again, "<sent@example.com>").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    t.settle().await;
    assert_eq!(
        counters(
            &t,
            &[
                "sendlater_stalled_connectors_total",
                "sendlater_abandoned_leases_total",
                "sendlater_dispatches_total",
                "sendlater_acks_total",
                "sendlater_ignored_answers_total",
            ]
        )
        .await,
        vec![1.0, 1.0, 2.0, 1.0, 0.0]
    );
    assert_invariants(&t, "acme", std::slice::from_ref(&item.item_id)).await;
    t.stop().await;
}

/// `sendlater_ignored_answers_total` counts each answer that names no job the stream
/// holds, once: forged ids, a malformed id, a message that is no answer, a duplicate.
#[tokio::test]
async fn every_ignored_answer_is_counted_once() {
    let mut t = start_with_metrics().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    let forged = format!("{}#1.{}", item.item_id, "0".repeat(32));
    c.tx.send(answer_ack(&forged)).await.unwrap();
    c.tx.send(answer_nack(&forged, true)).await.unwrap();
    c.tx.send(answer_ack("not a job id")).await.unwrap();
    c.tx.send(pb::ConnectorMessage { msg: None }).await.unwrap();
    c.ack(&job, "<real@example.com>").await;
    c.ack(&job, "<duplicate@example.com>").await;
    // Fence: a later job's ack, recorded after everything sent before it was read.
    let fence_item = t.schedule(email_reply("acme", "T2", T0 + 1_000)).await;
    let fence_job = c.next_job().await;
    assert_eq!(job_item(&fence_job), fence_item.item_id);
    fence(&t, &c, &fence_job).await;
    let sent = t.get_acme(&item.item_id).await;
    assert_eq!(sent.provider_message_id, "<real@example.com>");
    assert_eq!(
        counters(
            &t,
            &["sendlater_ignored_answers_total", "sendlater_acks_total"]
        )
        .await,
        vec![5.0, 2.0]
    );
    t.stop().await;
}

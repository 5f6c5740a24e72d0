use super::*;

fn key() -> Secret {
    Secret::new(vec![9; 32])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn commits_survive_reopen_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        let r1 = s.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
        let r2 = s
            .commit(
                Txn::new()
                    .require("a", Some(r1))
                    .put("a", b"2".to_vec())
                    .put("b/x", vec![]),
            )
            .await
            .unwrap();
        assert!(r2 > r1);
        drop(s);
        let (s, report) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(s.get("a").await.unwrap().unwrap().value, b"2");
        assert_eq!(s.scan("b/").await.unwrap().len(), 1);
        // The next commit continues after the replayed revision.
        let r3 = s.commit(Txn::new().put("c", vec![1])).await.unwrap();
        assert!(r3 > r2);
    });
}

#[test]
fn compare_and_swap_conflicts_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        let r1 = s.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
        s.commit(Txn::new().put("a", b"2".to_vec())).await.unwrap();
        let err = s
            .commit(Txn::new().require("a", Some(r1)).put("a", b"3".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(k) if k == "a"));
        let err = s
            .commit(Txn::new().require_absent("a").put("a", b"3".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        assert_eq!(s.get("a").await.unwrap().unwrap().value, b"2");
    });
}

#[test]
fn a_flipped_byte_anywhere_in_a_record_is_corruption_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        s.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
        s.commit(Txn::new().put("b", b"2".to_vec())).await.unwrap();
    });
    let path = dir.path().join(LOG_FILE);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[HEADER_LEN + 20] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let err = FileStore::open(dir.path(), key()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{msg}");
    assert!(msg.contains("record 0 at byte offset 24"), "{msg}");
    // Wrong key.
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(
        FileStore::open(dir.path(), Secret::new(vec![8; 32])),
        Err(StoreError::Corrupt(_))
    ));
    // Header damage.
    let mut bad = good.clone();
    bad[0] = b'X';
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        FileStore::open(dir.path(), key()),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn records_cannot_be_removed_or_reordered() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        for i in 0..3u8 {
            s.commit(Txn::new().put("k", vec![i])).await.unwrap();
        }
    });
    let path = dir.path().join(LOG_FILE);
    let good = std::fs::read(&path).unwrap();
    // Split into records.
    let mut recs = vec![];
    let mut off = HEADER_LEN;
    while off < good.len() {
        let len = u32::from_be_bytes(good[off..off + 4].try_into().unwrap()) as usize;
        recs.push(good[off..off + 4 + len].to_vec());
        off += 4 + len;
    }
    assert_eq!(recs.len(), 3);
    // Drop the middle record.
    let mut bad = good[..HEADER_LEN].to_vec();
    bad.extend_from_slice(&recs[0]);
    bad.extend_from_slice(&recs[2]);
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        FileStore::open(dir.path(), key()),
        Err(StoreError::Corrupt(_))
    ));
    // Swap two records.
    let mut bad = good[..HEADER_LEN].to_vec();
    bad.extend_from_slice(&recs[1]);
    bad.extend_from_slice(&recs[0]);
    bad.extend_from_slice(&recs[2]);
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        FileStore::open(dir.path(), key()),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn a_torn_final_record_is_dropped_and_the_log_stays_appendable() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        s.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
        s.commit(Txn::new().put("b", b"2".to_vec())).await.unwrap();
    });
    let path = dir.path().join(LOG_FILE);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 7]).unwrap();
    rt().block_on(async {
        let (s, report) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(report.records, 1);
        assert!(report.dropped_tail_bytes > 0);
        assert!(s.get("b").await.unwrap().is_none());
        s.commit(Txn::new().put("c", b"3".to_vec())).await.unwrap();
    });
    rt().block_on(async {
        let (s, report) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(report.dropped_tail_bytes, 0);
        assert_eq!(s.get("c").await.unwrap().unwrap().value, b"3");
        assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    });
}

#[test]
fn compaction_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        let big = vec![7u8; 256 * 1024];
        for i in 0..40 {
            s.commit(
                Txn::new()
                    .put(&format!("k{}", i % 5), big.clone())
                    .put("n", vec![i]),
            )
            .await
            .unwrap();
        }
        let size = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(size < 40 * 256 * 1024, "log was not compacted: {size}");
        drop(s);
        let (s, _) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(s.get("n").await.unwrap().unwrap().value, vec![39]);
        assert_eq!(s.scan("k").await.unwrap().len(), 5);
    });
}

#[test]
fn concurrent_commits_all_survive_reopen_and_compare_and_swap_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = 200u64;
    rt().block_on(async {
        let s = std::sync::Arc::new(FileStore::create(dir.path(), key()).unwrap());
        let mut handles = vec![];
        for i in 0..tasks {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                let own = s
                    .commit(
                        Txn::new()
                            .require_absent(&format!("k/{i}"))
                            .put(&format!("k/{i}"), vec![1]),
                    )
                    .await
                    .unwrap();
                // Increment one shared counter with compare-and-swap, retrying on conflict.
                loop {
                    let cur = s.get("counter").await.unwrap();
                    let (n, rev) = match &cur {
                        None => (0u64, None),
                        Some(v) => (
                            u64::from_be_bytes(v.value.as_slice().try_into().unwrap()),
                            Some(v.revision),
                        ),
                    };
                    match s
                        .commit(
                            Txn::new()
                                .require("counter", rev)
                                .put("counter", (n + 1).to_be_bytes().to_vec()),
                        )
                        .await
                    {
                        Ok(r) => return (own, r),
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        let mut revs = vec![];
        for h in handles {
            let (a, b) = h.await.unwrap();
            revs.push(a);
            revs.push(b);
        }
        revs.sort();
        revs.dedup();
        assert_eq!(
            revs.len() as u64,
            2 * tasks,
            "every commit has its own revision"
        );
        let counter = s.get("counter").await.unwrap().unwrap();
        assert_eq!(counter.value, tasks.to_be_bytes());
    });
    rt().block_on(async {
        let (s, report) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(report.dropped_tail_bytes, 0);
        assert_eq!(s.scan("k/").await.unwrap().len() as u64, tasks);
        assert_eq!(
            s.get("counter").await.unwrap().unwrap().value,
            tasks.to_be_bytes()
        );
    });
}

#[test]
fn a_check_sees_the_earlier_commits_of_its_batch() {
    let map = BTreeMap::from([(
        "a".to_string(),
        Versioned {
            value: vec![],
            revision: 3,
        },
    )]);
    let mut overlay: Overlay = std::collections::HashMap::new();
    assert_eq!(
        failed_check(&map, &overlay, &[Check::Revision("a".into(), 3)]),
        None
    );
    assert_eq!(
        failed_check(&map, &overlay, &[Check::Absent("b".into())]),
        None
    );
    // An earlier commit in the batch wrote `a` at 4 and created `b`, another deleted `c`.
    overlay.insert("a".into(), Some((4, vec![])));
    overlay.insert("b".into(), Some((4, vec![])));
    overlay.insert("c".into(), None);
    assert_eq!(
        failed_check(&map, &overlay, &[Check::Revision("a".into(), 3)]),
        Some("a".to_string())
    );
    assert_eq!(
        failed_check(&map, &overlay, &[Check::Revision("a".into(), 4)]),
        None
    );
    assert_eq!(
        failed_check(&map, &overlay, &[Check::Absent("b".into())]),
        Some("b".to_string())
    );
    assert_eq!(
        failed_check(&map, &overlay, &[Check::Absent("c".into())]),
        None
    );
}

#[test]
fn a_dropped_store_has_written_everything_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = FileStore::create(dir.path(), key()).unwrap();
        for i in 0..50u8 {
            s.commit(Txn::new().put(&format!("k{i}"), vec![i]))
                .await
                .unwrap();
        }
        drop(s);
        let (s, report) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(report.records, 50);
        assert_eq!(s.scan("k").await.unwrap().len(), 50);
    });
}

#[test]
fn concurrent_bounded_increments_stop_exactly_at_the_limit_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, max) = (120u64, 77u64);
    rt().block_on(async {
        let s = std::sync::Arc::new(FileStore::create(dir.path(), key()).unwrap());
        let mut handles = vec![];
        for _ in 0..tasks {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.commit(Txn::new().increment("n", max)).await
            }));
        }
        let (mut ok, mut limited) = (0, 0);
        for h in handles {
            match h.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::LimitReached { key, max: m }) => {
                    assert_eq!((key.as_str(), m), ("n", max));
                    limited += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!((ok, limited), (max, tasks - max));
        assert_eq!(s.get("n").await.unwrap().unwrap().value, max.to_be_bytes());
    });
    rt().block_on(async {
        let (s, _) = FileStore::open(dir.path(), key()).unwrap();
        assert_eq!(s.get("n").await.unwrap().unwrap().value, max.to_be_bytes());
        // Still refused after the reopen; a refused increment writes nothing.
        let rev = s.revision();
        assert!(matches!(
            s.commit(Txn::new().increment("n", max).put("other", vec![1]))
                .await,
            Err(StoreError::LimitReached { .. })
        ));
        assert!(s.get("other").await.unwrap().is_none());
        assert_eq!(s.revision(), rev);
    });
}

#[test]
fn increments_in_one_transaction_add_up_and_see_the_earlier_commits_of_the_batch() {
    let map = BTreeMap::from([(
        "n".to_string(),
        Versioned {
            value: 5u64.to_be_bytes().to_vec(),
            revision: 1,
        },
    )]);
    let mut overlay: Overlay = std::collections::HashMap::new();
    let two = Txn::new()
        .increment("n", 10)
        .increment("n", 10)
        .increment("m", 1);
    assert_eq!(
        evaluate_increments(&map, &overlay, &two).unwrap(),
        vec![
            ("n".to_string(), 7u64.to_be_bytes().to_vec()),
            ("m".to_string(), 1u64.to_be_bytes().to_vec())
        ]
    );
    overlay.insert("n".into(), Some((2, 9u64.to_be_bytes().to_vec())));
    assert!(matches!(
        evaluate_increments(&map, &overlay, &two),
        Err(StoreError::LimitReached { key, max: 10 }) if key == "n"
    ));
    overlay.insert("n".into(), Some((2, b"short".to_vec())));
    assert!(matches!(
        evaluate_increments(&map, &overlay, &Txn::new().increment("n", 10)),
        Err(StoreError::Corrupt(m)) if m.contains("counter n")
    ));
}

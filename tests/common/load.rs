//! Threads posting distinct upgrade failures to one or more servers until stopped or until
//! they stop answering, recording the id of every notification answered 200 `accepted` and
//! how many answers of each status came back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

use super::{fixtures, http_client};

#[derive(Default)]
struct Tally {
    accepted: Vec<String>,
    statuses: BTreeMap<u16, usize>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `threads` threads, each posting to `urls` in turn; devices are named `{tag}-{thread}-{n}`.
    pub fn start(urls: &[String], threads: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let threads = (0..threads)
            .map(|thread| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                let (urls, tag) = (urls.to_vec(), tag.to_owned());
                std::thread::spawn(move || post_until_stopped(&urls, &tag, thread, &stop, &tally))
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    pub fn accepted_so_far(&self) -> usize {
        self.tally.lock().expect("not poisoned").accepted.len()
    }

    /// How many answers had `status` so far.
    pub fn answered(&self, status: u16) -> usize {
        let tally = self.tally.lock().expect("not poisoned");
        tally.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Stops the threads and returns the ids answered `accepted`.
    pub fn finish(self) -> Vec<String> {
        self.finish_with_statuses().0
    }

    /// Stops the threads and returns the ids answered `accepted` and the count of each status.
    pub fn finish_with_statuses(self) -> (Vec<String>, BTreeMap<u16, usize>) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a load thread does not panic");
        }
        let tally = std::mem::take(&mut *self.tally.lock().expect("not poisoned"));
        assert!(
            !tally.accepted.is_empty(),
            "the load got no notification accepted"
        );
        (tally.accepted, tally.statuses)
    }
}

fn post_until_stopped(
    urls: &[String],
    tag: &str,
    thread: usize,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let client = http_client();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let body = fixtures::sw_fail(&format!("{tag}-{thread}-{n}"));
        // An error means the server is gone; an answer that is not `accepted` promises
        // nothing, so only its status is recorded.
        let Ok(response) = client.post(&urls[n % urls.len()]).json(&body).send() else {
            break;
        };
        let status = response.status().as_u16();
        let answer = response.json::<Value>().ok();
        let mut tally = tally.lock().expect("not poisoned");
        *tally.statuses.entry(status).or_default() += 1;
        if let Some(answer) =
            answer.filter(|answer| status == 200 && answer["status"] == "accepted")
        {
            let id = answer["id"].as_str().expect("ids are strings").to_owned();
            tally.accepted.push(id);
        }
    }
}

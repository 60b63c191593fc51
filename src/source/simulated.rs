//! The simulator as a [`Source`] (the demo): events paced to a rate, up to an optional count.

use super::batch::Batch;
use super::Source;
use crate::sim::Simulator;
use std::time::{Duration, Instant};

/// Simulated traffic at `rate` events per second.
pub struct SimulatedSource {
    sim: Simulator,
    rate: u64,
    events: Option<u64>,
    start: Instant,
}

impl SimulatedSource {
    /// `rate` events per second (at least 1), `events` in all (`None`: until stopped).
    pub fn new(sim: Simulator, rate: u64, events: Option<u64>) -> SimulatedSource {
        SimulatedSource {
            sim,
            rate: rate.max(1),
            events,
            start: Instant::now(),
        }
    }

    fn ended(&self) -> bool {
        self.events.is_some_and(|n| self.sim.produced() >= n)
    }
}

impl Source for SimulatedSource {
    fn fill(&mut self, batch: &mut Batch) -> std::io::Result<bool> {
        // the events due by now (pacing), at most a batch; when none is due, wait for the next
        // (at most 100 ms, so that the loop sees its stop flag)
        let due = |produced: u64, rate: u64| Duration::from_secs_f64(produced as f64 / rate as f64);
        while !self.ended() && !batch.full() {
            let next = due(self.sim.produced() + 1, self.rate);
            let now = self.start.elapsed();
            if next > now {
                if batch.is_empty() {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                }
                break;
            }
            let sim = &mut self.sim;
            batch.push_with(|buf| sim.append_event(buf));
        }
        Ok(!self.ended())
    }
}

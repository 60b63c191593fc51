use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::sim::{Faults, Simulator};
fn main() {
    let s = Settings::from_toml("[[experiment]]\nid = \"prompt-variant\"\narms = { control = 0.5, treatment = 0.5 }\ntreatment_inputs = [\"fragment\"]").unwrap();
    let mut e = Engine::new(&s);
    let mut sim = Simulator::single(1, Faults::default());
    let mut b = Vec::new();
    for _ in 0..60_000 {
        sim.next_event(&mut b);
        e.process(&b).unwrap();
    }
    for i in &e.experiments()[0].inputs {
        println!(
            "{} strata {} promotions {}",
            i.name,
            i.strata.slots().len(),
            i.strata.promotions()
        );
    }
    println!(
        "Event {} bytes",
        std::mem::size_of::<armwatch::event::Event>()
    );
}

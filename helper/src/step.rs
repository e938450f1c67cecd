//! `mpiexec_docker step-container start|stop|serve|join|spare`: the container a SPANK step's tasks join.
//! Everything is in the core library's `step_container`; the arguments and the answer (`Started`,
//! JSON) are its `step_contract` types.

use clap::Parser;
use mpiexec_docker_core::step_container;
use mpiexec_docker_core::step_contract::{StepAction, StepContainerCommand};

pub fn main(args: &[String]) -> i32 {
    let command = match StepContainerCommand::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            mpiexec_docker_core::say_error!("step-container: {}", e.to_string().lines().next().unwrap_or(""));
            return 2;
        }
    };
    let helper = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            mpiexec_docker_core::say_error!("cannot find the helper binary itself: {e}");
            return 1;
        }
    };
    let result = match command.action {
        StepAction::Join(a) => step_container::join(&a),
        StepAction::Start(a) => step_container::start(&a, &helper).map(|started| println!("{}", started.to_json())),
        StepAction::Stop(a) => step_container::stop(&a),
        StepAction::Serve(a) => step_container::serve(&a, &helper),
        StepAction::Spare(a) => step_container::make_spare(&a.start, &a.for_step, a.remove.as_deref(), &helper),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            mpiexec_docker_core::say_error!("{e}");
            1
        }
    }
}

//! The one place a rhai [`Engine`] is made, for `serve`, `check`, `test` and the tests alike.
//!
//! Scripts are sandboxed: rhai has no file, process or network access of its own, `eval` is
//! disabled, modules resolve only inside `scripts.dir`, and every limit is set explicitly.
//! `max_run_time` is enforced through `on_progress` against the run's CPU-time budget.

use std::path::{Component, Path, PathBuf};

use rhai::module_resolvers::FileModuleResolver;
use rhai::{Dynamic, Engine, EvalAltResult, Module, ModuleResolver, Position};

use super::{Limits, Settings, bindings, run};

/// Operations between two budget checks: reading the clock on every operation would cost
/// more than the script.
const BUDGET_CHECK_EVERY: u64 = 256;

pub(crate) fn build(limits: &Limits, settings: &Settings, dir: &Path) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(64);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(1 << 20);
    engine.set_max_array_size(10_000);
    engine.set_max_map_size(10_000);
    engine.set_max_modules(64);
    engine.disable_symbol("eval");
    engine.on_progress(|operations| {
        (operations % BUDGET_CHECK_EVERY == 0 && run::budget_spent())
            .then(|| Dynamic::from("max_run_time exceeded"))
    });
    engine.on_print(|text| {
        let (plugin, event_id) = run::tags();
        tracing::info!(%plugin, %event_id, "{text}");
    });
    engine.on_debug(|text, _, position| {
        let (plugin, event_id) = run::tags();
        tracing::debug!(%plugin, %event_id, %position, "{text}");
    });
    engine.set_module_resolver(ConfinedResolver::new(dir));
    let mut globals = Module::new();
    globals.set_var("vars", settings.vars.clone());
    engine.register_global_module(globals.into());
    bindings::register(&mut engine);
    engine
}

/// Resolves `import "lib/name"` to `scripts.dir/lib/name.rhai`, and refuses any path that is
/// absolute or climbs out of the folder.
struct ConfinedResolver {
    inner: FileModuleResolver,
}

impl ConfinedResolver {
    fn new(dir: &Path) -> ConfinedResolver {
        ConfinedResolver {
            inner: FileModuleResolver::new_with_path(PathBuf::from(dir)),
        }
    }
}

impl ModuleResolver for ConfinedResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        position: Position,
    ) -> Result<std::sync::Arc<Module>, Box<EvalAltResult>> {
        let confined = Path::new(path)
            .components()
            .all(|part| matches!(part, Component::Normal(_)));
        if !confined {
            let message = format!(
                "cannot import {path:?}: modules can only be imported from inside scripts.dir"
            );
            return Err(EvalAltResult::ErrorRuntime(message.into(), position).into());
        }
        // Relative to scripts.dir, never to the importing file's folder.
        self.inner.resolve(engine, None, path, position)
    }
}

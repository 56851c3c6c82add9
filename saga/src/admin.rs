//! What operators ask of sagas: list them, show one, and request a retry or an abort
//! that the next orchestrator carries out. (Filled in by the operator commands.)

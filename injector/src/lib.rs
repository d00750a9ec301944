//! picket-injector: the mutating admission webhook (work in progress).

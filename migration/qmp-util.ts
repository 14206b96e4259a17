// Small helpers shared by both halves of the engine.
import type { QmpClient, QmpEvent } from '../node/hypervisor/qmp.js';

/** How often QEMU's migration and block-job status is read while waiting on a state change. */
export const qmpPollMs = 50;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves after `ms` or at the next QMP event whose name is in `events`, whichever comes first. */
export function nextEventOrTimeout(qmp: QmpClient, events: readonly string[], ms: number): Promise<QmpEvent | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      off();
      resolve(null);
    }, ms);
    const off = qmp.onEvent((e) => {
      if (!events.includes(e.event)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

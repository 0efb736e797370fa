// The heartbeat test peer's thread entry: worker threads start without the test runner's
// TypeScript loader, so register it here, then load the code (as src/data/loader-thread.mjs does).
import { register } from 'tsx/esm/api';

register();
await import('./heartbeat-peer.ts');

// A ring thread's entry: worker threads start without the parent's TypeScript loader when the
// parent registered it through tsx's API (bin/vit-dist.js), so register it here, then load the code.
import { register } from 'tsx/esm/api';

register();
await import('./ring-thread-body.ts');

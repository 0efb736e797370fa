// Which images an evaluation reads: the model's data settings (a checkpoint's recipe's, an
// export's metadata's), changed by the command line's flags, or the flags alone for weights that
// record none (a timm file).
//
// The held-out split is only held out if it is the one the models never trained on: the format,
// fraction and seed that chose it in training must choose it here. So when the held-out split
// matters, models' settings must agree on those three and a flag may not contradict them; the path
// (another machine's copy) and the evaluation pipeline may change.
import type { DataSpec } from '../data/open.ts';
import { DATA_FORMATS, type DataFormat } from '../data/source.ts';
import type { RecipeData } from '../train/recipe.ts';
import { InputError } from '../common/errors.ts';
import type { EvalData } from './eval-pool.ts';

/** For weights without data settings: the held-out fraction and seed the repository's recipes use. */
export const DEFAULT_HOLDOUT = 0.1;
export const DEFAULT_HOLDOUT_SEED = 0;

export interface DataFlags {
  data?: string;
  format?: DataFormat;
  holdout?: number;
  holdoutSeed?: number;
  pipeline?: string;
}

/** The data settings an evaluation takes from a model. */
export type DataSettings = Pick<RecipeData, 'format' | 'path' | 'holdout' | 'holdoutSeed' | 'evalPipeline'>;

/** A model whose data settings count: its name (in errors) and its settings, null when its file records none. */
export interface DataSource {
  name: string;
  data: DataSettings | null;
}

/** The settings that choose the held-out images, by their recipe key. */
const HOLDOUT_KEYS = { format: 'data.format', holdout: 'data.holdout', holdoutSeed: 'data.holdoutSeed' } as const;
const FLAG_NAMES = { format: '--format', holdout: '--holdout', holdoutSeed: '--holdout-seed' } as const;

/**
 * The data of an evaluation of `sources`. With `guardHoldout`, the recipes must agree on what
 * chose the held-out images and the flags may not change it.
 */
export function resolveEvalData(sources: readonly DataSource[], flags: DataFlags, guardHoldout: boolean): EvalData {
  const withData = sources.filter((s): s is DataSource & { data: DataSettings } => s.data !== null);
  const base = withData[0];
  if (!base) return fromFlagsAlone(sources, flags);
  const data = base.data;
  if (guardHoldout) {
    for (const key of Object.keys(HOLDOUT_KEYS) as (keyof typeof HOLDOUT_KEYS)[]) {
      for (const other of withData.slice(1)) {
        if (other.data[key] !== data[key]) {
          throw new InputError(
            'HOLDOUT_MISMATCH',
            `${base.name} and ${other.name} hold out different images (${HOLDOUT_KEYS[key]} ${JSON.stringify(data[key])} and ${JSON.stringify(other.data[key])}): what one held out, the other may have trained on`,
          );
        }
      }
      const flag = flags[key];
      if (flag !== undefined && flag !== data[key]) {
        throw new InputError(
          'HOLDOUT_MISMATCH',
          `${FLAG_NAMES[key]} ${flag} differs from ${HOLDOUT_KEYS[key]} ${JSON.stringify(data[key])} in the data settings of ${base.name}: the held-out split would include images it trained on`,
        );
      }
    }
  }
  const spec: DataSpec = {
    format: flags.format ?? data.format,
    path: flags.data ?? data.path,
    holdout: flags.holdout ?? data.holdout,
    holdoutSeed: flags.holdoutSeed ?? data.holdoutSeed,
  };
  return { spec, pipeline: flags.pipeline ?? data.evalPipeline };
}

function fromFlagsAlone(sources: readonly DataSource[], flags: DataFlags): EvalData {
  const missing = (['data', 'format', 'pipeline'] as const).filter((key) => flags[key] === undefined).map((key) => `--${key}`);
  if (missing.length > 0) {
    const names = sources.map((s) => s.name).join(', ');
    throw new InputError(
      'USAGE',
      `${names} carr${sources.length === 1 ? 'ies' : 'y'} no recipe or data settings in its metadata: pass ${missing.join(', ')} (e.g. --data /usr/share/datasets/fashion-mnist --format fashion-mnist --pipeline "normalize(fashion-mnist)"; formats: ${DATA_FORMATS.join(', ')})`,
    );
  }
  return {
    spec: {
      format: flags.format!,
      path: flags.data!,
      holdout: flags.holdout ?? DEFAULT_HOLDOUT,
      holdoutSeed: flags.holdoutSeed ?? DEFAULT_HOLDOUT_SEED,
    },
    pipeline: flags.pipeline!,
  };
}

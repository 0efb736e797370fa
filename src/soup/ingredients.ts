// A soup's ingredients: the weights of fine-tuned models, each from a run directory (its newest
// checkpoint), a checkpoint file or a .safetensors file, read through the same loader as a
// distillation teacher. Only the weights are an ingredient (or, with --use-ema, the checkpoint's
// moving average of them); optimizer state never is. Averaging is meaningful only between models
// of one architecture with the same parameters, so every ingredient is checked against the first.
import { modelParamSpecs, type ModelArgs, type ModelConfig, type ParamSpec } from '../model/model.ts';
import { readSavedWeights } from '../model/teacher.ts';
import type { ExportedData } from '../model/weights.ts';
import type { Recipe } from '../train/recipe.ts';

export interface Ingredient {
  /** As the user named it: the run directory or file given on the command line. */
  name: string;
  /** The file read: a run directory's newest checkpoint, or the file itself. */
  file: string;
  model: string;
  modelArgs: ModelArgs;
  config: ModelConfig;
  specs: ParamSpec[];
  /** The flat parameter vector in the model's layout (src/model/model.ts). */
  params: Float32Array;
  /** A checkpoint's recipe; null for a .safetensors file. */
  recipe: Recipe | null;
  /** The data it was trained on (its settings define the held-out split): the recipe's, or an export's metadata's; null when unknown. */
  data: ExportedData | null;
}

/** An ingredient without its weights: what the checks and reports keep while the next one is loaded. */
export type IngredientInfo = Omit<Ingredient, 'params'>;

export interface IngredientOptions {
  /** Take a checkpoint's moving average of the weights instead of the weights. */
  useEma: boolean;
  /** What the weights are, in errors ("ingredient" by default). */
  role?: string;
}

export function loadIngredient(path: string, options: IngredientOptions): Ingredient {
  const role = options.role ?? 'ingredient';
  const saved = readSavedWeights(path, role);
  let params = saved.params;
  if (options.useEma) {
    if (saved.recipe === null)
      throw new Error(
        `--use-ema: ${role} ${saved.file} is a .safetensors file, which holds one set of weights (export a checkpoint with --use-ema to get its EMA)`,
      );
    if (saved.ema === null) throw new Error(`--use-ema: checkpoint ${saved.file} holds no EMA of the weights (its recipe keeps none)`);
    params = saved.ema;
  }
  const { file, model, modelArgs, config, recipe, data } = saved;
  return { name: path, file, model, modelArgs, config, specs: modelParamSpecs(config), params, recipe, data };
}

const showShape = (shape: number[]): string => `[${shape.join(', ')}]`;

/** "numClasses 10 in A, 100 in B; depth ..." for the config fields that differ, or ''. */
function configDifferences(a: IngredientInfo, b: IngredientInfo): string {
  // Families share few fields: between two, the family is the difference (a ViT config may omit its family).
  const family = (config: ModelConfig): string => config.family ?? 'vit';
  if (family(a.config) !== family(b.config)) return `family ${family(a.config)} in ${a.name}, ${family(b.config)} in ${b.name}`;
  const show = (config: ModelConfig, key: string): string => JSON.stringify((config as unknown as Record<string, unknown>)[key]) ?? 'none';
  const keys = [...new Set([...Object.keys(a.config), ...Object.keys(b.config)])];
  return keys
    .filter((key) => show(a.config, key) !== show(b.config, key))
    .map((key) => `${key} ${show(a.config, key)} in ${a.name}, ${show(b.config, key)} in ${b.name}`)
    .join('; ');
}

/**
 * Throws unless `b` has the architecture and parameters of `a`: the same tensors (names and
 * shapes), the same architecture (a different head count changes no shape) and the same model
 * name. Each error names the first tensor that differs and both ingredients.
 */
export function assertSameArchitecture(a: IngredientInfo, b: IngredientInfo): void {
  const differ = `ingredients ${a.name} and ${b.name} do not share an architecture`;
  const detail = configDifferences(a, b);
  const because = detail ? ` (${detail})` : '';
  const inB = new Map(b.specs.map((s) => [s.name, s]));
  for (const spec of a.specs) {
    const other = inB.get(spec.name);
    if (!other) throw new Error(`${differ}: tensor "${spec.name}" is in ${a.name} but not in ${b.name}${because}`);
    if (showShape(spec.timmShape) !== showShape(other.timmShape)) {
      throw new Error(
        `${differ}: tensor "${spec.name}" is ${showShape(spec.timmShape)} in ${a.name}, ${showShape(other.timmShape)} in ${b.name}${because}`,
      );
    }
  }
  const inA = new Set(a.specs.map((s) => s.name));
  const extra = b.specs.find((s) => !inA.has(s.name));
  if (extra) throw new Error(`${differ}: tensor "${extra.name}" is in ${b.name} but not in ${a.name}${because}`);
  if (detail) throw new Error(`${differ}: ${detail}`);
  if (a.model !== b.model) throw new Error(`${differ}: ${a.name} is a ${a.model}, ${b.name} a ${b.model}`);
}

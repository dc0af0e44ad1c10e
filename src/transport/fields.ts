/**
 * Field schemas shared by the codecs and the server API: one copy of the rule
 * for text that is stored (the core's `isStorableText`).
 */
import { z } from 'zod';
import { isStorableText, UNSTORABLE_TEXT } from '../core/limits.js';

/** A string of `min`–`max` characters that the store can keep as it is. */
export const storable = (min: number, max: number) =>
  (min > 0 ? z.string().min(min) : z.string())
    .max(max)
    .refine(isStorableText, { message: UNSTORABLE_TEXT });

/** Ids are MongoDB ObjectIds in their 24-hex form, as the platform uses them. */
import { ObjectId } from 'bson';

const OBJECT_ID = /^[0-9a-fA-F]{24}$/;

export function newId(): string {
  return new ObjectId().toHexString();
}

export function isObjectId(value: unknown): value is string {
  return typeof value === 'string' && OBJECT_ID.test(value);
}

/** The canonical (lower-case) form, so `ABC…` and `abc…` name one request. */
export function normalizeId(value: string): string {
  return value.toLowerCase();
}

// Lint is part of `npm test`: type-aware rules catch floating promises and unsafe `any` flows.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'ui/dist/**', '.demo/**', 'coverage/**', 'packaging/**/build/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/require-await': 'off',
      'no-constant-condition': ['error', { checkLoops: false }],
      eqeqeq: ['error', 'always', { null: 'ignore' }],
    },
  },
  // Dependency direction of docs/architecture.md: consensus, mesh and bandwidth import none of our other
  // folders; migration imports bandwidth and only types of mesh and the hypervisor.
  ...[
    ['consensus', ['node', 'mesh', 'migration', 'bandwidth', 'ui']],
    ['mesh', ['node', 'consensus', 'migration', 'bandwidth', 'ui']],
    ['bandwidth', ['node', 'consensus', 'mesh', 'migration', 'ui']],
  ].map(([folder, banned]) => ({
    files: [`${folder}/**/*.ts`],
    rules: {
      'no-restricted-imports': [
        'error',
        { patterns: [{ group: banned.map((b) => `**/${b}/**`), message: `${folder}/ must not import ${banned.join(', ')} (docs/architecture.md)` }] },
      ],
    },
  })),
  {
    files: ['migration/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['**/consensus/**', '**/ui/**'], message: 'migration/ must not import consensus or ui (docs/architecture.md)' },
            { group: ['**/mesh/**', '**/node/hypervisor/**'], allowTypeImports: true, message: 'migration/ may import only types of mesh and the hypervisor' },
          ],
        },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
);
